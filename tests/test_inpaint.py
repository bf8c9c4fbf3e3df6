"""Inpainting (context encoder, pix2pix): the reconstruction term sees only the hole, composited outputs
keep the known pixels exactly, the mask generators hit their ratio and replay from a seed, the hole
metrics, and a real CPU run with the masked / filled / real rows in TensorBoard, an exact resume,
`ganlab eval` and `ganlab inpaint` on a folder of the user's images and masks."""

import numpy as np
import pytest
import torch
from PIL import Image

from ganlab.data import masks
from ganlab.errors import GanlabError
from ganlab.metrics.restoration import psnr_hole, ssim_hole
from ganlab.models import inpaint as nets
from ganlab.objectives import build_objective
from ganlab.objectives.inpaint import RECIPES, composite, fill, hole_reconstruction, mask_input, recipe
from conftest import cli, compose, make_idx, read_events, run_cli
from test_reliability import _assert_same_training_state


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_the_reconstruction_term_has_no_gradient_outside_the_hole(kind):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    m = masks.draw("random_box", 4, (16, 16), 0.3)
    out = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_()  # G's raw output
    for filled in (composite(mask_input(x, m), out, m), out):  # on the composite, and on G's output itself
        grad, = torch.autograd.grad(hole_reconstruction(filled, x, m, kind), out)
        hole = m.expand_as(grad).bool()
        assert torch.equal(grad[~hole], torch.zeros_like(grad[~hole]))  # exactly zero where the pixel is known
        assert (grad[hole] != 0).float().mean() > 0.99
    diff = (out - x).abs() if kind == "l1" else (out - x).square()
    expected = diff[m.expand_as(diff).bool()].mean()  # the mean over the hole's pixels and channels
    assert hole_reconstruction(composite(mask_input(x, m), out, m), x, m, kind).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("name", list(RECIPES))
def test_composited_outputs_equal_the_input_outside_the_hole_exactly(name):
    cfg = compose("model=inpaint", f"model.recipe={name}", "model.width=8", "model.bottleneck_dim=32")
    torch.manual_seed(1)
    for size, channels in ((28, 1), (32, 3)):
        g, d = nets.build(cfg.model, (channels, size, size), recipe(cfg.model))
        x = torch.rand(6, channels, size, size) * 2 - 1
        m = masks.draw("free_form", 6, (size, size), 0.3)
        out = fill(g, x, m)  # in eval mode
        with torch.no_grad():
            raw = g.eval()(mask_input(x, m), m)
        assert raw.shape == x.shape and raw.abs().max() <= 1  # tanh, cropped back from the padded size
        known = ~m.expand_as(x).bool()
        assert torch.equal(out[known], x[known])  # bit for bit
        assert torch.equal(out[~known], raw[~known]) and not torch.equal(out[~known], x[~known])
        if name == "pix2pix":
            assert d(x, mask_input(x, m), m).shape[:2] == (6, 1)  # one score per 70x70 patch
            assert sum(isinstance(mod, torch.nn.Dropout) for mod in g.modules()) == 3  # pix2pix's noise
            convs = [mod for mod in d.modules() if isinstance(mod, torch.nn.Conv2d)]
            # the authors' NLayerDiscriminator: no bias in the convs a BatchNorm follows, (real + fake) / 2
            assert [c.bias is None for c in convs] == [False] + [True] * (len(convs) - 2) + [False]
            assert recipe(cfg.model)["d_scale"] == 0.5
        else:
            assert d(x).shape == (6, 1)
    channel_fc = compose("model=inpaint", "model.bottleneck=channel_fc", "model.width=8")
    g, _ = nets.build(channel_fc.model, (1, 28, 28), recipe(channel_fc.model))
    assert any(isinstance(mod, nets.ChannelwiseFC) for mod in g.modules())
    assert g(torch.zeros(2, 1, 28, 28), torch.ones(2, 1, 28, 28)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("kind", masks.KINDS)
@pytest.mark.parametrize("size", [28, 64])
def test_mask_generators_hit_the_requested_ratio_and_replay_from_a_seed(kind, size):
    for ratio in (0.1, 0.25, 0.4):
        torch.manual_seed(3)
        m = masks.draw(kind, 200, (size, size), ratio)
        torch.manual_seed(3)
        again = masks.draw(kind, 200, (size, size), ratio)
        assert torch.equal(m, again) and m.shape == (200, 1, size, size)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        share = m.mean((1, 2, 3))
        if kind == "center":  # one square, rounded to whole pixels
            assert torch.all((share - ratio).abs() <= 2.0 / size) and torch.equal(m, m[:1].expand_as(m))
        elif kind == "random_box":  # every box's area within the rounding of its sides
            assert torch.all((share - ratio).abs() <= 2.5 / size)
            assert len({tuple(b.nonzero()[0].tolist()) for b in m}) > 50  # placed anywhere
        else:  # strokes: the union of whole strokes closest to the ratio, per image
            assert abs(share.mean().item() - ratio) < 0.03 and share.std() < 0.06
        gen = masks.draw(kind, 200, (size, size), ratio, generator=torch.Generator().manual_seed(9))
        assert torch.equal(gen, masks.draw(kind, 200, (size, size), ratio, generator=torch.Generator().manual_seed(9)))
        if kind != "center":
            torch.manual_seed(4)
            assert not torch.equal(m, masks.draw(kind, 200, (size, size), ratio))
    with pytest.raises(GanlabError, match="mask='ring' is not valid"):
        masks.draw("ring", 1, (8, 8), 0.2)
    with pytest.raises(GanlabError, match="mask_ratio=1.5 is not valid"):
        masks.draw(kind, 1, (8, 8), 1.5)


def test_pix2pix_fills_at_test_time_as_in_training_one_image_at_a_time():
    """The paper's test protocol (and the authors' test.py without --eval): dropout on, batch norm with the test
    image's own statistics; the running statistics are left as they were. model.test_mode=eval opts out."""
    assert recipe(compose("model=inpaint", "model.recipe=pix2pix").model)["test_mode"] == "train"
    assert recipe(compose("model=inpaint").model)["test_mode"] == "eval"
    assert recipe(compose("model=inpaint", "model.recipe=pix2pix", "model.test_mode=eval").model)["test_mode"] == "eval"
    with pytest.raises(GanlabError, match="model.test_mode"):
        recipe(compose("model=inpaint", "model.test_mode=sometimes").model)
    cfg = compose("model=inpaint", "model.recipe=pix2pix", "model.width=8")
    torch.manual_seed(2)
    g, _ = nets.build(cfg.model, (1, 32, 32), recipe(cfg.model))
    g.test_mode = "train"
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    m = masks.draw("center", 3, (32, 32), 0.25)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    torch.manual_seed(5)
    a = fill(g, x, m)
    after_a = torch.rand(4)
    alone = fill(g, x[:1], m[:1])
    b = fill(g, x, m)
    other = fill(g, x, m, seed=1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(4), after_a)  # the caller's random state is left as it was
    assert torch.equal(a[:1], alone)  # image by image: the first image's fill does not depend on the others
    assert torch.equal(a, b)  # the dropout masks come from the seed: the same fill every time (an eval reproduces)
    hole = m.expand_as(x).bool()
    assert not torch.equal(a[hole], other[hole]) and torch.equal(a[~hole], other[~hole])  # dropout is on
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())  # running statistics untouched
    assert g.training  # the mode it came in with
    g.test_mode = "eval"
    assert torch.equal(fill(g, x, m), fill(g, x, m))  # eval mode: deterministic


def test_hole_metrics_see_only_the_hole():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    m = masks.draw("center", 8, (28, 28), 0.25)
    assert torch.all(psnr_hole(x, x, m) == 100) and torch.allclose(ssim_hole(x, x, m), torch.ones(8))
    off = x + 0.2 * (1 - m)  # wrong only outside the hole
    assert torch.all(psnr_hole(off, x, m) == 100)
    noisy = x + 0.1 * m  # off by 0.1 in [-1, 1] = 0.05 in [0, 1] on every hole pixel: 26.02 dB
    assert psnr_hole(noisy, x, m) == pytest.approx(torch.full((8,), 10 * np.log10(1 / 0.05 ** 2)), abs=1e-3)
    assert torch.all(ssim_hole(x + 0.5 * torch.randn_like(x) * m, x, m) < 0.9)


def test_inpaint_refuses_what_it_cannot_train(data_root):
    from ganlab.data.sources import build_source

    for overrides, message in ((["dataset=ring8"], "model=inpaint needs images"),
                               (["model.conditional=true"], "conditioned on the masked image, not on labels"),
                               (["penalty=gp"], "use penalty=none"),
                               (["model.recipe=deepfill"], "model.recipe='deepfill' is not valid"),
                               (["model.mask=ring"], "mask='ring' is not valid"),
                               (["model.mask_ratio=0"], "mask_ratio=0 is not valid"),
                               (["model.lambda_rec=0", "model.lambda_adv=0"], "leave G nothing to learn"),
                               (["model.bottleneck=pool"], "model.bottleneck='pool' is not valid")):
        data = [] if "dataset=ring8" in overrides else [f"dataset.root={data_root}"]
        cfg = compose("model=inpaint", "model.width=8", *overrides, *data)
        with pytest.raises(GanlabError, match=message):
            build_objective(cfg, build_source(cfg.dataset), torch.device("cpu"))


def _args(data, run, steps, *extra):
    return ["train", "model=inpaint", f"dataset.root={data}", "device=cpu", "model.width=8", "model.bottleneck_dim=32",
            f"train.steps={steps}", "train.batch_size=16", "train.log_every=2", "train.sample_every=4",
            "train.ckpt_every=4", "train.progress=none", "eval.every=8", "eval.n=48", "eval.features=pixels",
            "tricks.ema=0.9", f"hydra.run.dir={run}", *extra]


@pytest.mark.slow
def test_a_cpu_run_shows_the_rows_resumes_exactly_and_fills_a_folder(tmp_path):
    data = tmp_path / "data"
    make_idx(data, n=96)
    whole = tmp_path / "whole"
    out = cli(*_args(data, whole, 8, "model.mask=free_form"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "inpainting (context_encoder) | mask free_form 0.25 | L2 on the hole x 0.999 + nonsaturating x 0.001" in out.stdout
    acc = read_events(whole / "tb")
    rows = acc.Images("Samples/inpaint")
    assert [e.step for e in rows] == [4, 8]
    assert (rows[-1].width, rows[-1].height) == (8 * 30 + 2, 3 * 30 + 2)  # masked / filled / real, 8 fixed images
    scalars = set(acc.Tags()["scalars"])
    assert {"Loss/rec", "Loss/G_adv", "Loss/D", "D/D(x)", "Metrics/fd", "Metrics/psnr_hole", "Metrics/ssim_hole"} <= scalars
    assert 0 < acc.Scalars("Metrics/psnr_hole")[-1].value < 100 and -1 < acc.Scalars("Metrics/ssim_hole")[-1].value < 1

    # 4 steps, then resumed to 8: G, D, their optimizers and EMA as in the uninterrupted run (the masks replay)
    split = tmp_path / "split"
    assert cli(*_args(data, split, 4, "model.mask=free_form"), cwd=tmp_path).returncode == 0
    out = cli(*_args(data, split, 8, "model.mask=free_form"), "resume=true", cwd=tmp_path)
    assert out.returncode == 0 and "resuming at step 4" in out.stdout + out.stderr, out.stdout + out.stderr
    _assert_same_training_state(torch.load(whole / "checkpoints" / "last.pt", weights_only=True),
                                torch.load(split / "checkpoints" / "last.pt", weights_only=True),
                                nets=("generator", "discriminator", "generator_ema"))

    out = cli("eval", f"target={whole}", "n=40", "features=pixels", "metrics=[fd]", cwd=tmp_path)
    assert out.returncode == 0 and "psnr_hole" in out.stdout and "ssim_hole" in out.stdout, out.stdout + out.stderr
    out = cli("sample", f"run={whole}", "n=4", f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    assert out.returncode != 0 and "ganlab inpaint run=RUN_DIR" in out.stderr

    photos, holes = tmp_path / "photos", tmp_path / "holes"
    (photos / "sub").mkdir(parents=True)
    (holes / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (30, 50), dtype=np.uint8)
    Image.fromarray(wide).save(photos / "wide.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(photos / "sub" / "small.png")
    hole = np.zeros((30, 50), np.uint8)
    hole[8:20, 10:30] = 255  # white = hole
    Image.fromarray(hole).save(holes / "wide.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).convert("RGB").save(holes / "sub" / "small.jpg")  # any size, format
    filled = tmp_path / "filled"
    out = run_cli("inpaint", f"run={whole}", f"in={photos}", f"mask={holes}", f"out={filled}", cwd=tmp_path)
    assert out.returncode == 0 and "2 images filled by inpaint (context_encoder) step 8" in out.stdout, out.stdout + out.stderr
    result = np.asarray(Image.open(filled / "wide.png"))
    assert result.shape == (30, 50)
    known = hole == 0
    assert np.array_equal(result[known], wide[known]) and not np.array_equal(result[~known], wide[~known])
    with Image.open(filled / "sub" / "small.png") as im:
        assert im.size == (20, 20) and im.mode == "L"  # the model is grey: its images come out grey
    (holes / "wide.png").unlink()
    out = cli("inpaint", f"run={whole}", f"in={photos}", f"mask={holes}", f"out={tmp_path / 'again'}", cwd=tmp_path)
    assert out.returncode != 0 and "no mask for" in out.stderr and not (tmp_path / "again").exists()

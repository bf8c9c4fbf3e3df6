"""PG-GAN (Karras et al. 2018): fading G and D in, equalized learning rate, pixel norm, the growth
schedule, a real run growing 4 -> 32 with a grid per resolution, sampling at the data's size, and an
exact resume after SIGKILL in the middle of a fade."""

import math
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganlab.errors import GanlabError
from ganlab.models import progressive as pro
from ganlab.models.layers import EqualizedConv2d, EqualizedLinear, pixel_norm
from ganlab.objectives.progressive import GrowthSchedule
from conftest import compose, make_idx, read_events, run_cli
from test_reliability import _assert_same_training_state, _last_step, _popen, _wait_for


def _nets(resolution=16, width=16, group=4):
    cfg = compose("model=pggan", f"model.width={width}", "model.fmap_base=128", f"model.minibatch_stddev={group}",
                  "model.z_dim=32")
    torch.manual_seed(0)
    return pro.build(cfg.model, (3, resolution, resolution), resolution)


def test_at_alpha_0_the_grown_nets_equal_the_smaller_ones_on_upsampled_or_pooled_images():
    g, d = _nets()
    z = torch.randn(8, 32)
    zero = torch.zeros(())
    with torch.no_grad():
        grown = g(z, res=16, alpha=zero)
        smaller = g(z, res=8)
        assert grown.shape == (8, 3, 16, 16) and smaller.shape == (8, 3, 8, 8)
        assert torch.equal(grown, F.interpolate(smaller, scale_factor=2, mode="nearest"))
        x = torch.randn(8, 3, 16, 16)
        assert torch.equal(d(x, alpha=zero), d(F.avg_pool2d(x, 2)))


def test_at_alpha_1_only_the_new_block_speaks():
    g, d = _nets()
    z, x, one = torch.randn(8, 32), torch.randn(8, 3, 16, 16), torch.ones(())
    with torch.no_grad():
        g_before, d_before = g(z, res=16, alpha=one), d(x, alpha=one)
        assert torch.equal(g_before, g(z, res=16)) and torch.equal(d_before, d(x))
        for layer in (g.to_rgb["8"], d.from_rgb["8"]):  # the previous resolution's RGB layers
            layer.weight.add_(1.0)
            layer.bias.add_(1.0)
        assert torch.equal(g(z, res=16, alpha=one), g_before) and torch.equal(d(x, alpha=one), d_before)
        half = torch.full((), 0.5)
        assert not torch.equal(g(z, res=16, alpha=half), g_before)  # mid-fade both speak


def test_equalized_lr_layers_have_unit_variance_weights_scaled_by_he_at_run_time():
    g, d = _nets(resolution=32, width=64, group=4)
    layers = [m for net in (g, d) for m in net.modules() if isinstance(m, (EqualizedConv2d, EqualizedLinear))]
    assert len(layers) > 10 and not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.ConvTranspose2d))
                                        for net in (g, d) for m in net.modules())
    for layer in layers:
        fan_in = layer.weight[0].numel()
        gain = layer.scale * math.sqrt(fan_in)  # sqrt(2) for the LeakyReLU layers, 1 for toRGB and D's output
        assert gain == pytest.approx(math.sqrt(2)) or gain == pytest.approx(1.0) or gain == pytest.approx(math.sqrt(2) / 4)
        assert torch.equal(layer.effective_weight(), layer.weight * (gain / math.sqrt(fan_in)))
        if layer.weight.numel() >= 4096:  # enough draws to measure: the stored weights are N(0, 1)
            assert layer.weight.var().item() == pytest.approx(1.0, abs=0.06)
            assert (layer.effective_weight().var() * fan_in / gain**2).item() == pytest.approx(1.0, abs=0.06)
    conv = EqualizedConv2d(128, 128, 3)  # He: unit-variance inputs keep variance gain^2 = 2 through the layer
    assert conv(torch.randn(64, 128, 8, 8))[..., 1:-1, 1:-1].var().item() == pytest.approx(2.0, rel=0.05)  # no border


def test_pixel_norm_gives_unit_mean_square_features_in_g():
    x = torch.randn(4, 32, 5, 5) * torch.rand(4, 1, 5, 5) * 10
    assert torch.allclose(pixel_norm(x).pow(2).mean(dim=1), torch.ones(4, 5, 5), atol=1e-5)
    g, _ = _nets()
    seen = []
    g.blocks["16"].register_forward_hook(lambda m, i, out: seen.append(out))
    g.conv.register_forward_hook(lambda m, i, out: seen.append(pixel_norm(F.leaky_relu(out, 0.2))))
    g(torch.randn(4, 32) * 3, res=16)
    for features in seen:
        assert torch.allclose(features.pow(2).mean(dim=1), torch.ones_like(features[:, 0]), atol=1e-4)


def test_the_schedule_reaches_each_resolution_at_the_configured_image_count():
    fade, stable, batches = 1000, 600, [64, 32, 16]
    s = GrowthSchedule(32, fade, stable, batches)
    firsts = {}
    for step in range(1, 2000):
        res, alpha, batch = s.at(step)
        assert 0 < alpha <= 1 and batch == batches[min(pro.resolutions(32).index(res), 2)]
        firsts.setdefault(res, (step, s.images_before(step), alpha))
    assert sorted(firsts) == [4, 8, 16, 32]
    assert firsts[4] == (1, 0, 1.0)
    expected = stable  # images before each resolution's fade starts: stabilize, then fade + stabilize per doubling
    for res, batch_before in ((8, 64), (16, 32), (32, 16)):
        step, images, alpha = firsts[res]
        assert expected <= images < expected + batch_before, res  # the first step at or after the image count
        stage = s.stage(step)  # the fade: alpha from 1/n to 1 over n steps showing ~fade images
        assert stage.fading and alpha == 1 / stage.steps and abs(stage.steps * stage.batch - fade) < 2 * batch_before
        expected += fade + stable
    assert s.grown_at == s.stages[-1].first_step and s.at(s.grown_at - 1)[1] == 1.0  # the fade ends at alpha 1
    ends = [step for step in range(1, 2000) if s.is_last_at_resolution(step)]
    assert [s.at(e)[0] for e in ends] == [4, 8, 16] and all(s.at(e + 1)[0] == 2 * s.at(e)[0] for e in ends)


def test_adam_forgets_its_state_when_each_stage_starts_as_the_official_code():
    """reset_opt_for_new_lod: both optimizers' state is cleared after the last step of every stage (before a
    fade-in and before a stabilization), kept within a stage, and kept always with model.reset_optimizers=false."""
    from ganlab.objectives.progressive import Progressive

    src = type("S", (), {"kind": "image", "shape": (1, 16, 16), "name": "mnist", "num_classes": 10, "in_memory": True})()
    over = ("model.width=8", "model.fmap_base=64", "model.z_dim=8", "model.fade_images=64", "model.stable_images=64",
            "model.batch_sizes=[16]", "train.steps=100")
    for reset in (True, False):
        obj = Progressive(compose("model=pggan", *over, f"model.reset_optimizers={reset}"), src, torch.device("cpu"))
        starts = sorted(obj.schedule.stage_starts)
        assert starts == [s.first_step for s in obj.schedule.stages[1:]] and len(starts) == 4  # 4x4 | fade 8 | 8 | fade 16 | 16

        def fill():
            for opt in obj.optimizers.values():
                for group in opt.param_groups:
                    for p in group["params"]:
                        opt.state[p] = {"step": torch.tensor(3.0), "exp_avg": torch.ones_like(p)}

        for step in range(1, 40):
            fill()
            obj.after_step(step)
            empty = [not opt.state for opt in obj.optimizers.values()]
            assert empty == [reset and step + 1 in starts] * 2, (reset, step)


def test_geometry_pads_28_px_data_to_32_and_refuses_what_cannot_grow():
    cfg = compose("model=pggan")
    assert pro.geometry(cfg.model, (1, 28, 28)) == (32, (2, 2))
    assert pro.geometry(cfg.model, (3, 64, 64)) == (64, (0, 0))
    with pytest.raises(GanlabError, match="add dataset.resolution=32"):
        pro.geometry(compose("model=pggan", "model.resolution=32").model, (3, 64, 64))
    with pytest.raises(GanlabError, match="power of two"):
        pro.geometry(compose("model=pggan", "model.resolution=48").model, (3, 32, 32))


def _pggan_args(data, run, steps, *extra):
    return ["train", "model=pggan", "dataset=mnist", f"dataset.root={data}", "dataset.download=false", "device=cpu",
            f"train.steps={steps}", "model.width=16", "model.z_dim=32", "train.n_samples=16", "train.log_every=5",
            "train.sample_every=1000", f"hydra.run.dir={run}", *extra]


@pytest.mark.slow
def test_a_cpu_run_grows_4_to_32_with_a_grid_per_resolution_and_samples_at_the_data_size(tmp_path):
    data = tmp_path / "data"
    make_idx(data, n=128)
    run = tmp_path / "run"
    # 4x4: 64 images; then per doubling a fade of 64 and a stabilization of 64 (batches 16, 16, 8, 8)
    args = _pggan_args(data, run, 40, "model.fade_images=64", "model.stable_images=64", "model.batch_sizes=[16,16,8]")
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "progressive 4 -> 32 px (grown at step 37" in out.stdout + out.stderr
    acc = read_events(run / "tb")
    resolution = [(e.step, e.value) for e in acc.Scalars("Schedule/resolution")]
    assert sorted({v for _, v in resolution}) == [8.0, 16.0, 32.0] and resolution[-1] == (40, 32.0)
    alpha = {e.step: e.value for e in acc.Scalars("Schedule/alpha")}
    assert alpha[5] == pytest.approx(0.25) and alpha[10] == 1.0 and alpha[15] == pytest.approx(3 / 8)
    grids = {tag: acc.Images(tag) for tag in acc.Tags()["images"] if tag.startswith("Samples/res_")}
    assert sorted(grids) == ["Samples/res_0004", "Samples/res_0008", "Samples/res_0016", "Samples/res_0032"]
    assert [grids[t][0].step for t in sorted(grids)] == [4, 12, 28, 40]  # each resolution's last step
    assert len({(g[0].width, g[0].height) for g in grids.values()}) == 1  # upsampled to 32 x 32: they line up
    assert acc.Images("Samples/fixed_z")[-1].width == 4 * 30 + 2  # cropped back to 28 x 28 (4 x 4 grid)

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["objective"] == {"step": 40, "resolution": 32, "alpha": 1.0, "batch": 8, "images": 416}
    out = run_cli("sample", f"run={run}", "n=5", f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    samples = np.load(tmp_path / "s.npz")["arr_0"]
    assert samples.shape == (5, 28, 28, 1) and samples.dtype == np.uint8
    out = run_cli("eval", f"target={run}", "n=64", "features=pixels", "metrics=[fd]", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr  # scored against the 28 px reals: the shapes agree
    assert "fd" in out.stdout


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_fade_then_resume_ends_bit_identical(tmp_path):
    data = tmp_path / "data"
    make_idx(data, n=128)
    # 4x4 for 8 steps, then 8x8 fading in over steps 9..208 (alpha = (step - 8) / 200), stabilized over
    # steps 209..216, then 16x16 fading in
    common = ("model.fade_images=1600", "model.stable_images=64", "model.batch_sizes=[8]", "train.ckpt_every=5",
              "train.log_every=10")
    steps = 220
    whole = _popen(_pggan_args(data, tmp_path / "whole", steps, *common), tmp_path)
    run = tmp_path / "killed"
    proc = _popen(_pggan_args(data, run, steps, *common), tmp_path)
    _wait_for(lambda: _last_step(run) >= 30, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    fade = saved["objective"]
    assert fade["resolution"] == 8 and 0 < fade["alpha"] < 1, fade  # killed mid-fade
    assert fade["alpha"] == pytest.approx((saved["step"] - 8) / 200)

    resumed = run_cli(*_pggan_args(data, run, steps, *common), "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming at step {saved['step']}" in resumed.stdout + resumed.stderr
    whole_out, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, whole_out
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    _assert_same_training_state(a, b)
    for key in a["generator_ema"]:
        assert torch.equal(a["generator_ema"][key], b["generator_ema"][key]), key
    assert a["objective"] == b["objective"] and b["objective"]["resolution"] == 16  # grew on after the resume
    logged = [e.step for e in read_events(run / "tb").Scalars("Schedule/alpha")]
    assert logged == [e.step for e in read_events(tmp_path / "whole" / "tb").Scalars("Schedule/alpha")]


def test_a_resume_whose_schedule_disagrees_with_the_checkpoint_is_refused(tmp_path):
    from ganlab.objectives.progressive import Progressive

    cfg = compose("model=pggan", "model.width=8", "model.fade_images=64", "model.stable_images=64",
                  "model.batch_sizes=[16]")
    source = type("S", (), {"kind": "image", "shape": (1, 32, 32), "name": "mnist"})()
    obj = Progressive(cfg, source, torch.device("cpu"))
    obj.load_state_dict({"step": 6, "resolution": 8, "alpha": 0.5, "batch": 16, "images": 96})
    assert obj.step == 6
    with pytest.raises(GanlabError, match="resume with the run's own model"):
        obj.load_state_dict({"step": 6, "resolution": 8, "alpha": 0.75, "batch": 16, "images": 96})


def test_pggan_refuses_2d_points_and_conditioning():
    from ganlab.objectives.progressive import Progressive

    points = type("S", (), {"kind": "points", "shape": (2,), "name": "ring8"})()
    with pytest.raises(GanlabError, match="needs images"):
        Progressive(compose("model=pggan", "dataset=ring8"), points, torch.device("cpu"))
    images = type("S", (), {"kind": "image", "shape": (1, 32, 32), "name": "mnist"})()
    with pytest.raises(GanlabError, match="unconditional"):
        Progressive(compose("model=pggan", "model.conditional=true"), images, torch.device("cpu"))


def test_a_later_stage_batch_larger_than_the_data_is_refused_at_start_up(tmp_path):
    """The 16x16 stage's batch (64) exceeds the 48 images: refused before step 1, naming the stage, not when the
    stage starts; a schedule that train.steps ends before that stage trains."""
    from conftest import cli

    data = tmp_path / "data"
    make_idx(data, n=48)
    sizes = ("model.fade_images=32", "model.stable_images=32", "model.batch_sizes=[16,16,64]", "train.ckpt_every=1000")
    r = cli(*_pggan_args(data, tmp_path / "run", 12, *sizes), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "model.batch_sizes' entry for 16x16 (from step 7)=64 is larger than the dataset (48 samples)" in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    r = cli(*_pggan_args(data, tmp_path / "run2", 6, *sizes), cwd=tmp_path)  # ends at 8x8: never reaches it
    assert r.returncode == 0, r.stderr

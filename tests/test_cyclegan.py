"""CycleGAN (Zhu et al. 2017): the cycle and identity losses, the history pool, the unpaired data, a real
CPU run on generated domains (digits <-> inverted digits) with the translation rows in TensorBoard,
an exact resume (pools included) and `ganlab translate` on a folder."""

import signal

import pytest
import torch
from PIL import Image

from ganlab.data.batches import UnpairedBatches
from ganlab.data.sources import UnpairedSource
from ganlab.data.synthetic import make_unpaired
from ganlab.errors import GanlabError
from ganlab.models import cyclegan as cg
from ganlab.objectives.cyclegan import ImagePool, cycle_loss, identity_loss
from conftest import compose, read_events, run_cli
from test_reliability import _assert_same_training_state, _last_step, _popen, _wait_for


def test_the_cycle_loss_is_zero_for_exactly_inverse_mappings_and_the_identity_loss_for_the_identity():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    g = lambda t: 0.5 * t + 0.25  # noqa: E731
    f = lambda t: (t - 0.25) / 0.5  # noqa: E731  (the exact inverse, in exactly representable steps)
    assert cycle_loss(x, f(g(x))).item() == 0.0
    assert identity_loss(x, torch.nn.Identity()(x)).item() == 0.0
    assert cycle_loss(x, g(x)).item() > 0 and identity_loss(x, g(x)).item() > 0
    assert identity_loss(x, x + 0.1).item() == pytest.approx(0.1, abs=1e-6)  # the mean absolute error


def test_the_pool_returns_fresh_images_until_full_then_an_old_one_with_probability_one_half():
    torch.manual_seed(0)
    pool = ImagePool(6, (1, 2, 2), torch.device("cpu"))
    fresh = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    assert torch.equal(pool.query(fresh[:4]), fresh[:4]) and pool.count == 4
    assert torch.equal(pool.query(fresh[4:]), fresh[4:]) and pool.count == 6  # full now
    old, n = 0, 4000
    for i in range(n):
        before = set(pool.images[:, 0, 0, 0].tolist())
        value = pool.query(torch.full((1, 1, 2, 2), 100.0 + i))[0, 0, 0, 0].item()
        after = set(pool.images[:, 0, 0, 0].tolist())
        if value == 100.0 + i:
            assert after == before  # the new image shown, the pool untouched
        else:
            old += 1  # an image from the pool, handed out once and replaced by the new one
            assert value in before and value not in after and after == before - {value} | {100.0 + i}
    assert old / n == pytest.approx(0.5, abs=0.03)
    # seeded: the same draws give the same answers
    a, b = ImagePool(3, (1,), torch.device("cpu")), ImagePool(3, (1,), torch.device("cpu"))
    xs = torch.arange(40, dtype=torch.float32).view(40, 1)
    torch.manual_seed(5)
    out_a = a.query(xs)
    torch.manual_seed(5)
    assert torch.equal(out_a, b.query(xs)) and torch.equal(a.images, b.images)
    b.load_state_dict(a.state_dict())
    assert b.count == 3 and torch.equal(b.images, a.images)


def test_networks_have_the_papers_shapes_and_the_unpaired_batches_flip(tmp_path):
    cfg = compose("model=cyclegan", "model.width=8")
    g, _, d, _ = cg.build(cfg.model, (3, 64, 64))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert d(x).shape == (2, 1, 6, 6)  # 64 px -> 6 x 6 patches of 70 x 70
    assert sum(isinstance(m, cg.ResnetBlock) for m in g.modules()) == 6
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in g.modules())
    assert any(isinstance(m, torch.nn.ReflectionPad2d) for m in g.modules())
    with pytest.raises(GanlabError, match="at least 32 px"):
        cg.build(cfg.model, (3, 16, 16))

    a, b = make_unpaired(tmp_path, n=10, size=16)
    src = UnpairedSource("unpaired", a, b, resolution=16, channels=1, flip=True, load_size=None)
    torch.manual_seed(0)
    batches = UnpairedBatches(src, 10, 0, torch.device("cpu"))
    xa, xb = batches.next()
    raw = src.load()
    assert xa.shape == (10, 1, 16, 16) and xb.mean() > xa.mean()  # B holds the inverted strokes
    unit = lambda t: t.float() / 127.5 - 1  # noqa: E731
    as_is = [any(torch.equal(img, unit(r)) for r in raw["a"]) for img in xa]
    mirrored = [any(torch.equal(img, unit(r).flip(-1)) for r in raw["a"]) for img in xa]
    assert all(i or m for i, m in zip(as_is, mirrored)) and any(m and not i for i, m in zip(as_is, mirrored))
    with pytest.raises(GanlabError, match="dataset.root_b=DIR"):
        UnpairedSource("unpaired", a, tmp_path / "nowhere", resolution=16).load()


def test_unpaired_batches_are_random_crops_of_the_load_size_images_as_the_authors_jitter(tmp_path):
    a, b = make_unpaired(tmp_path, n=10, size=24)
    assert UnpairedSource("unpaired", a, b, resolution=256).load_size == 286  # auto: the authors' 286 / 256
    src = UnpairedSource("unpaired", a, b, resolution=16, channels=1, flip=True, load_size=20)
    raw = src.load()["a"].float() / 127.5 - 1
    assert raw.shape[-2:] == (20, 20)
    torch.manual_seed(0)
    batches = UnpairedBatches(src, 10, 0, torch.device("cpu"))
    seen = set()
    for _ in range(3):
        xa, _ = batches.next()
        assert xa.shape == (10, 1, 16, 16)
        for img in xa:  # each one a 16 px window of some load-size image, flipped or not
            found = {(i, top, left, flip) for i in range(len(raw)) for top in range(5) for left in range(5)
                     for flip in (False, True)
                     if torch.equal(img, (lambda w: w.flip(-1) if flip else w)(raw[i, :, top:top + 16, left:left + 16]))}
            assert found, "not a crop of the data"
            seen |= {(t, l) for _, t, l, _ in found}
    assert len(seen) > 5  # the offsets vary over the whole 0..4 range
    assert {t for t, _ in seen} >= {0, 4} or {l for _, l in seen} >= {0, 4}
    assert batches.preview(4).shape[-2:] == (16, 16)  # the fixed rows: centre crops
    with pytest.raises(GanlabError, match="dataset.load_size=12 is not valid"):
        UnpairedSource("unpaired", a, b, resolution=16, load_size=12)


def test_cyclegan_and_unpaired_data_refuse_each_others_partners(tmp_path):
    out = run_cli("train", "model=cyclegan", "dataset=mnist", "train.steps=1", "device=cpu", cwd=tmp_path)
    assert out.returncode != 0 and "use dataset=unpaired dataset.root_a=DIR dataset.root_b=DIR" in out.stderr
    out = run_cli("train", "model=dcgan", "dataset=unpaired", f"dataset.root_a={tmp_path}", f"dataset.root_b={tmp_path}",
                  "train.steps=1", "device=cpu", cwd=tmp_path)
    assert out.returncode != 0 and "two unpaired image domains, for model=cyclegan" in out.stderr
    out = run_cli("train", "model=cyclegan", "train.steps=1", "device=cpu", cwd=tmp_path)
    assert out.returncode != 0 and "needs dataset.root_a=DIR and dataset.root_b=DIR" in out.stderr


def _args(a, b, run, *extra):
    return ["train", "model=cyclegan", f"dataset.root_a={a}", f"dataset.root_b={b}", "dataset.resolution=32",
            "dataset.channels=1", "model.width=4", "model.blocks=1", "model.pool_size=5", "device=cpu",
            "train.steps=24", "train.batch_size=2", "train.log_every=2", "train.sample_every=12",
            "train.ckpt_every=3", "train.n_samples=4", "train.progress=none", f"hydra.run.dir={run}", *extra]


@pytest.mark.slow
def test_a_cpu_run_shows_the_rows_resumes_exactly_with_its_pools_and_translates_a_folder(tmp_path):
    a, b = make_unpaired(tmp_path / "data", n=12, size=28)  # 28 px files, trained at 32
    whole = tmp_path / "whole"
    proc_whole = _popen(_args(a, b, whole), tmp_path)
    killed = tmp_path / "killed"  # SIGKILLed once its pools are full (5 images each: from step 3 on), resumed
    proc = _popen(_args(a, b, killed), tmp_path)
    _wait_for(lambda: _last_step(killed) >= 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] < 24 and saved["objective"]["pool_a"]["count"] == 5
    out = run_cli(*_args(a, b, killed), "resume=true", cwd=tmp_path)
    assert out.returncode == 0 and f"resuming at step {saved['step']}" in out.stdout + out.stderr, out.stdout + out.stderr
    log, _ = proc_whole.communicate(timeout=600)
    assert proc_whole.returncode == 0, log
    x = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    y = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    _assert_same_training_state(x, y, nets=("generator_ab", "generator_ba", "discriminator_a", "discriminator_b"))
    for k in ("a", "b"):
        assert torch.equal(x["objective"][f"pool_{k}"]["images"], y["objective"][f"pool_{k}"]["images"])
        assert y["objective"][f"pool_{k}"]["images"].abs().sum() > 0

    acc = read_events(whole / "tb")
    for tag in ("Samples/a2b", "Samples/b2a"):
        rows = acc.Images(tag)
        assert [e.step for e in rows] == [12, 24]
        assert (rows[-1].width, rows[-1].height) == (4 * 34 + 2, 3 * 34 + 2)  # real / translated / reconstructed
    assert {"Loss/G_adv_ab", "Loss/G_adv_ba", "Loss/cycle_a", "Loss/cycle_b", "Loss/identity_a", "Loss/identity_b",
            "Loss/D_a", "Loss/D_b", "Train/lr_g", "Samples/real"} <= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    lr = {e.step: e.value for e in acc.Scalars("Train/lr_g")}
    assert lr[12] == pytest.approx(2e-4) and lr[20] == pytest.approx(2e-4 * 4 / 12)  # linear decay over the 2nd half

    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    Image.new("L", (40, 28), 30).save(src / "wide.png")
    Image.new("RGB", (20, 20), (200, 10, 10)).save(src / "sub" / "small.jpg")
    out = run_cli("translate", f"run={whole}", f"in={src}", f"out={tmp_path / 'out'}", "direction=b2a", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 images translated b2a" in out.stdout
    with Image.open(tmp_path / "out" / "wide.png") as im:
        assert im.size == (40, 28)
    with Image.open(tmp_path / "out" / "sub" / "small.jpg") as im:
        assert im.size == (20, 20)
    out = run_cli("sample", f"run={whole}", "n=4", f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    assert out.returncode != 0 and "ganlab translate" in out.stderr


def test_the_lr_schedule_in_epochs_is_the_authors_lambda_rule(tmp_path):
    """model.n_epochs=1 model.n_epochs_decay=1 on 4 images per domain at batch 1: an epoch is 4 steps; the first
    trains at the lr, the second (the one decay epoch) at 1 - 1/2 of it, as the authors' rule gives."""
    from ganlab.objectives.cyclegan import epoch_factor
    from conftest import cli

    assert [epoch_factor(e, 100, 100) for e in (0, 99, 100, 199)] == [1.0, 1.0, 1 - 1 / 101, 1 - 100 / 101]
    a, b = make_unpaired(tmp_path, n=4, size=32)
    run = tmp_path / "run"
    args = _args(a, b, run, "model.n_epochs=1", "model.n_epochs_decay=1", "train.batch_size=1", "train.steps=8",
                 "train.log_every=1", "train.ckpt_every=8", "train.sample_every=8")
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lrs = [round(e.value, 9) for e in read_events(run / "tb").Scalars("Train/lr_g")]
    assert lrs == [2e-4] * 4 + [1e-4] * 4
    r = cli(*_args(a, b, tmp_path / "run2", "model.n_epochs=-1"), cwd=tmp_path)
    assert r.returncode == 2 and "model.n_epochs=-1 is not valid" in r.stderr

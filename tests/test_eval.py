"""Metrics against closed forms and hand-made sets, and the sample -> eval round trip."""

import json
import math

import numpy as np
import pytest
import torch

from ganlab.metrics import fd, frechet_distance, kid, prdc
from conftest import cli, read_events, run_cli


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    # diagonal covariances: ||mu1-mu2||^2 + sum (s1 - s2)^2 with s the standard deviations
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    expected = float((mu1 - mu2).pow(2).sum() + (s1 - s2).pow(2).sum())
    assert frechet_distance(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2)) == pytest.approx(expected, rel=1e-9)
    # a full covariance and itself rotated: the same Gaussian up to the mean shift
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    assert frechet_distance(torch.zeros(2), a, torch.ones(2), a) == pytest.approx(2.0, abs=1e-9)


def test_frechet_distance_from_samples_approaches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200000, 2, generator=g) * torch.tensor([1.0, 2.0])
    y = torch.randn(200000, 2, generator=g) * torch.tensor([2.0, 2.0]) + torch.tensor([3.0, 0.0])
    assert fd(x, y)["fd"] == pytest.approx(9.0 + 1.0, rel=0.02)


@pytest.mark.parametrize("d", [1, 2, 3, 16])
def test_kid_by_moment_sums_equals_kid_by_kernel_matrices(d, monkeypatch):
    from ganlab.metrics import distances

    g = torch.Generator().manual_seed(d)
    fake, real = torch.randn(700, d, generator=g) * 2, torch.randn(900, d, generator=g) + 0.3
    by_moments = kid(fake, real, subsets=7, subset_size=300)
    monkeypatch.setattr(distances, "MOMENTS_MAX_D3", 0)
    by_matrices = kid(fake, real, subsets=7, subset_size=300)
    for key in ("kid", "kid_std"):
        assert by_moments[key] == pytest.approx(by_matrices[key], rel=1e-9, abs=1e-12)


def test_kid_and_prdc_identical_versus_disjoint():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1500, 8, generator=g)
    b = torch.randn(1500, 8, generator=g)  # same distribution
    far = torch.randn(1500, 8, generator=g) + 10.0  # disjoint support
    same, apart = kid(a, b, subsets=10, subset_size=500), kid(a, far, subsets=10, subset_size=500)
    assert abs(same["kid"]) < 0.05 < apart["kid"]
    close = prdc(a[:800], b[:800])
    assert close["precision"] > 0.8 and close["recall"] > 0.8 and close["coverage"] > 0.8 and close["density"] > 0.7
    none = prdc(a[:800], far[:800])
    assert none == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    run = root / "run"
    out = cli("train", "model=gan", "dataset=ring8", "train.steps=20", "device=cpu", f"hydra.run.dir={run}", cwd=root)
    assert out.returncode == 0, out.stderr
    return run


def test_sample_then_eval_round_trip(ring_run, tmp_path):
    npz = tmp_path / "s.npz"
    assert run_cli("sample", f"run={ring_run}", "n=400", f"out={npz}", cwd=tmp_path).returncode == 0
    out = run_cli("eval", f"target={npz}", "dataset=ring8", "n=400", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "s.metrics.json").read_text())
    m, p = record["metrics"], record["protocol"]
    assert {"fd", "kid", "precision", "recall", "density", "coverage", "modes_captured", "high_quality", "reverse_kl"} <= set(m)
    assert all(math.isfinite(v) for v in m.values())
    assert p["n_fake"] == 400 and p["features"] == "raw 2D coordinates" and p["reference"]["dataset"] == "ring8"
    direct = cli("eval", f"target={ring_run}", "n=400", cwd=tmp_path)
    assert direct.returncode == 0, direct.stderr
    assert json.loads((ring_run / "eval" / "last" / "metrics.json").read_text())["protocol"]["generated_by"].startswith("gan step 20")
    # the run's own metrics.json (from training: ring8 runs are scored at the end) is left as it was
    trained = json.loads((ring_run / "metrics.json").read_text())
    assert trained["step"] == 20 and "Metrics/modes_captured" in trained["metrics"]


def test_real_samples_score_as_the_real_distribution(tmp_path):
    from ganlab.data.sources import MixtureSource

    src = MixtureSource("ring8", "ring", 8, 2.0, 0.02)
    pts, _ = src.sample(2000, torch.Generator().manual_seed(5), torch.device("cpu"))
    np.savez(tmp_path / "real.npz", arr_0=pts.numpy())
    out = cli("eval", f"target={tmp_path / 'real.npz'}", "dataset=ring8", "n=2000", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    m = json.loads((tmp_path / "real.metrics.json").read_text())["metrics"]
    # FD of two 2,000-sample draws of one distribution is sampling noise only (~1e-2 here)
    assert m["modes_captured_strict"] == 8 and m["high_quality"] > 0.98 and m["fd"] < 0.03 and m["coverage"] > 0.9


def test_images_without_local_inception_weights_get_a_clear_message(tmp_path):
    imgs = (np.random.default_rng(0).random((20, 28, 28, 1)) * 255).astype(np.uint8)
    np.savez(tmp_path / "x.npz", arr_0=imgs)
    from conftest import make_idx

    make_idx(tmp_path / "data", n=40)
    args = ["eval", f"target={tmp_path / 'x.npz'}", "dataset=mnist", f"dataset.root={tmp_path / 'data'}",
            "dataset.download=false", "n=20", "features=inception"]
    out = cli(*args, cwd=tmp_path, TORCH_HOME=str(tmp_path / "torch-home"))
    assert out.returncode == 2 and "Inception weights are not available offline" in out.stderr
    assert "inception_weights=PATH" in out.stderr and "Traceback" not in out.stderr
    assert "features=classifier" in out.stderr
    pixels = cli(*args[:-1], "features=pixels", cwd=tmp_path)
    assert pixels.returncode == 0, pixels.stderr
    assert json.loads((tmp_path / "x.metrics.json").read_text())["protocol"]["features"].startswith("raw pixels")


def test_eval_scores_a_folder_of_images_as_the_same_images_in_an_npz(tmp_path):
    """A folder of PNGs (translations, inpaintings) is scored like the .npz of the same pixels; images of
    another size are resized to the reference's, RGB converted to its grey."""
    from PIL import Image

    from conftest import make_idx

    make_idx(tmp_path / "data", n=40)
    imgs = (np.random.default_rng(0).random((20, 28, 28, 1)) * 255).astype(np.uint8)
    np.savez(tmp_path / "x.npz", arr_0=imgs)
    (tmp_path / "pngs" / "sub").mkdir(parents=True)
    for i, img in enumerate(imgs):
        Image.fromarray(img[..., 0]).save(tmp_path / "pngs" / ("sub" if i % 2 else "") / f"{i:02d}.png")
    ref = ["dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false", "n=20", "features=pixels"]
    assert cli("eval", f"target={tmp_path / 'x.npz'}", *ref, cwd=tmp_path).returncode == 0
    r = cli("eval", f"target={tmp_path / 'pngs'}", *ref, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from_npz = json.loads((tmp_path / "x.metrics.json").read_text())
    from_dir = json.loads((tmp_path / "pngs.metrics.json").read_text())
    # the same 20 images, in another order (the folder's sorted names): order-free metrics agree
    assert from_dir["metrics"]["fd"] == pytest.approx(from_npz["metrics"]["fd"], rel=1e-5)
    assert from_dir["protocol"]["generated_by"] == "image folder"
    (tmp_path / "rgb").mkdir()
    for i, img in enumerate(imgs):
        Image.fromarray(np.repeat(img, 3, -1)).resize((56, 56)).save(tmp_path / "rgb" / f"{i}.png")
    r = cli("eval", f"target={tmp_path / 'rgb'}", *ref, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("eval", f"target={tmp_path / 'pngs'}", cwd=tmp_path)
    assert r.returncode == 2 and "an image folder target needs the reference data" in r.stderr


def test_eval_of_an_npz_needs_a_reference(tmp_path):
    np.savez(tmp_path / "p.npz", arr_0=np.zeros((20, 2), np.float32))
    out = cli("eval", f"target={tmp_path / 'p.npz'}", cwd=tmp_path)
    assert out.returncode == 2 and "needs the reference data" in out.stderr


def test_in_training_evaluation_keeps_the_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    out = cli("train", "model=gan", "dataset=ring8", "device=cpu", "train.steps=60", "eval.every=20", "eval.n=500",
                  "eval.monitor=Metrics/fd", f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    record = json.loads((run / "metrics.json").read_text())
    best = record["best"]
    assert best["monitor"] == "Metrics/fd" and best["step"] in (20, 40, 60)
    fds = {e.step: e.value for e in read_events(run / "tb").Scalars("Metrics/fd")}
    assert sorted(fds) == [20, 40, 60] and fds[best["step"]] == pytest.approx(min(fds.values()), rel=1e-6)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert state["step"] == best["step"]
    assert record["protocol"]["features"] == "raw 2D coordinates" and record["protocol"]["n_fake"] == 500
    sample = cli("sample", f"run={run}", "checkpoint=best", "n=5", f"out={tmp_path / 'b.npz'}", cwd=tmp_path)
    assert sample.returncode == 0 and f"step {best['step']}" in sample.stdout


def test_inception_features_give_fid_and_is_from_a_local_weights_file(tmp_path):
    """The Inception path end to end, with a local state dict in torchvision's inception_v3 layout
    (random weights: the numbers mean nothing, the plumbing and the protocol are what is checked)."""
    import torchvision

    weights = tmp_path / "inception.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    from conftest import make_idx

    make_idx(tmp_path / "data", n=40)
    imgs = (np.random.default_rng(0).random((12, 28, 28, 1)) * 255).astype(np.uint8)
    np.savez(tmp_path / "x.npz", arr_0=imgs)
    out = cli("eval", f"target={tmp_path / 'x.npz'}", "dataset=mnist", f"dataset.root={tmp_path / 'data'}",
                  "dataset.download=false", "n=12", f"inception_weights={weights}", "metrics=[fd,is]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "x.metrics.json").read_text())
    m, p = rec["metrics"], rec["protocol"]
    assert math.isfinite(m["fd"]) and 1.0 <= m["is"] <= 1000 and "is_std" in m
    assert p["features"].startswith("torchvision inception_v3") and "NOT the TF-FID" in p["features"]
    import hashlib

    assert p["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert p["grayscale_to_rgb"] == "channel repeated 3x" and p["metrics"] == ["fd", "is"]
    assert "is_of_real_reference" in p

"""ganlab's offline evaluation classifier, the Inception-style score, class histograms and Stacked MNIST."""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import cli, make_idx
from ganlab.metrics import class_histogram, inception_score


def test_inception_score_of_hand_made_probabilities():
    k = 10
    confident_all = torch.eye(k).repeat(50, 1)  # sure of its class, every class equally often
    assert inception_score(confident_all)["is"] == pytest.approx(k, rel=1e-6)
    one_class = torch.eye(k)[torch.zeros(500, dtype=torch.long)]  # collapsed onto one class
    assert inception_score(one_class)["is"] == pytest.approx(1.0, abs=1e-6)
    unsure = torch.full((500, k), 1.0 / k)  # no class recognisable
    assert inception_score(unsure)["is"] == pytest.approx(1.0, abs=1e-6)
    half = torch.eye(k)[torch.arange(500) % 5]  # half the classes
    assert inception_score(half)["is"] == pytest.approx(5.0, rel=1e-6)


def test_class_histogram_counts_dropped_modes_and_its_kl():
    k, real = 10, torch.full((10,), 100)
    every = class_histogram(torch.eye(k)[torch.arange(1000) % k], real)
    assert every["classes_captured"] == 10 and every["class_kl"] == pytest.approx(0.0, abs=1e-12)
    half = class_histogram(torch.eye(k)[torch.arange(1000) % 5], real)
    assert half["classes_captured"] == 5 and half["class_kl"] == pytest.approx(math.log(2), rel=1e-9)
    assert half["class_kl_uniform"] == pytest.approx(math.log(2), rel=1e-9)
    skewed = class_histogram(torch.eye(k)[torch.arange(1000) % k], torch.tensor([500] + [50] * 9))
    assert skewed["classes_captured"] == 10 and skewed["class_kl"] > 0.3 and skewed["class_kl_uniform"] == pytest.approx(0.0, abs=1e-12)


def test_the_class_kls_standard_error_matches_the_spread_over_fresh_draws():
    """class_kl(_uniform)_se from one histogram estimates how much the KL moves between independent draws
    of the same size from the same distribution (here: 100 classes, skewed, 5,000 labels a draw)."""
    k, n = 100, 5000
    g = torch.Generator().manual_seed(3)
    digit = torch.tensor([11.3, 8.2, 11.6, 6.5, 8.1, 10.2, 10.7, 12.2, 8.3, 13.0], dtype=torch.float64)
    p = (digit[:, None] * digit[None, :]).flatten() / 100.0 ** 2  # two skewed digits, like Stacked MNIST's three
    real = torch.ones(k)
    draws = [class_histogram(torch.nn.functional.one_hot(torch.multinomial(p.float(), n, replacement=True,
                                                                         generator=g), k).float(), real)
             for _ in range(60)]
    spread = torch.tensor([d["class_kl_uniform"] for d in draws]).std().item()
    estimates = torch.tensor([d["class_kl_uniform_se"] for d in draws])
    assert 0.7 * spread < estimates.median().item() < 1.5 * spread
    assert all(d["class_kl_se"] == d["class_kl_uniform_se"] for d in draws)  # the real histogram here is uniform
    again = class_histogram(torch.nn.functional.one_hot(torch.arange(n) % 7, k).float(), real)
    assert again["class_kl_uniform_se"] == class_histogram(torch.nn.functional.one_hot(torch.arange(n) % 7, k).float(),
                                                           real)["class_kl_uniform_se"] > 0  # seeded: repeatable
    one_mode = class_histogram(torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), k).float(), real)
    assert one_mode["class_kl_uniform_se"] == pytest.approx(0.0, abs=1e-12)
    assert one_mode["class_kl_uniform"] == pytest.approx(math.log(k))


def test_the_training_shift_moves_each_image_whole_and_fills_with_background():
    """v2's augmentation: every image moves by its own whole-pixel offset in [-2, 2] per axis, nothing is
    rescaled, and what moves in is background (-1)."""
    from ganlab.metrics.classifier import _shift

    x = torch.full((400, 1, 9, 9), -1.0)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the middle ...
    x[:, 0, 0, :] = 0.5  # ... and a grey top row
    out = _shift(x, 2, torch.Generator().manual_seed(0))
    bright = (out[:, 0] == 1.0).nonzero()
    assert len(bright) == 400  # the pixel is never lost or duplicated
    offsets = {(int(r) - 4, int(c) - 4) for _, r, c in bright.tolist()}
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}  # all 25 offsets, nothing farther
    assert set(out.unique().tolist()) <= {-1.0, 0.5, 1.0}  # whole pixels: nothing interpolated
    for i, r, c in bright.tolist():  # the grey row moved with the pixel: down by dy, or out of the image
        dy, dx = r - 4, c - 4
        grey_rows = out[i, 0].eq(0.5).any(1).nonzero().flatten().tolist()
        assert grey_rows == ([dy] if dy >= 0 else [])
        if dy >= 0:  # what moved in beside it is background: 9 - |dx| grey pixels in that row
            assert int(out[i, 0, dy].eq(0.5).sum()) == 9 - abs(dx)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    make_idx(root, "MNIST", n=600)
    return root


# 16 px: the classifier's recipe is fixed (400 steps of batch 128), so the tests that train it keep the images
# small (4x less work than 28 px); one classifier of these digits at 16 px serves the tests of this file
RES = 16


def _cached(root):
    return sorted((root / "MNIST" / "raw").glob("ganlab-classifier-*.pt"))


@pytest.mark.slow
def test_the_classifier_is_trained_once_cached_beside_the_data_and_recognises_real_digits(digits_root):
    from ganlab.data.sources import IdxSource
    from ganlab.metrics.classifier import classifier_features

    src = IdxSource("mnist", "MNIST", digits_root, download=False, resolution=RES)
    extract, info = classifier_features(src, torch.device("cpu"))
    files = _cached(digits_root)
    assert len(files) == 1 and info["weights"] == str(files[0]) and f"-{RES}px-" in files[0].name
    assert info["classifier_held_out_accuracy"] > 0.9  # the generated strokes are easy to tell apart
    x, y = src.load()
    feats, probs = extract(x.float() / 127.5 - 1)
    assert feats.shape == (600, 128) and probs.shape == (600, 10)
    assert (probs.argmax(1) == y).double().mean() > 0.9
    mtime = files[0].stat().st_mtime_ns
    _, again = classifier_features(src, torch.device("cpu"))  # the second time: loaded, not retrained
    assert again["weights_sha256"] == info["weights_sha256"] and files[0].stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_a_corrupt_cached_classifier_is_retrained(digits_root, tmp_path, caplog):
    import shutil

    from ganlab.data.sources import IdxSource
    from ganlab.metrics.classifier import classifier_features

    classifier_features(IdxSource("mnist", "MNIST", digits_root, download=False, resolution=RES), torch.device("cpu"))
    shutil.copytree(digits_root / "MNIST", tmp_path / "MNIST")  # the data and its cached classifier
    src = IdxSource("mnist", "MNIST", tmp_path, download=False, resolution=RES)
    path = _cached(tmp_path)[0]
    path.write_bytes(b"not a checkpoint")
    with caplog.at_level("WARNING", logger="ganlab"):
        _, again = classifier_features(src, torch.device("cpu"))
    assert again["weights"] == str(path) and torch.load(path, weights_only=True)["meta"]["dataset"] == "mnist"
    assert [r.getMessage() for r in caplog.records].count(
        f"{path} does not load (UnpicklingError); training the classifier again.") == 1  # said once


_JOB = """
import logging, os, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
import torch
import ganlab.metrics.classifier as c
from ganlab.data.sources import IdxSource
c.EVALUATION = c.Recipe(epochs=1, min_steps=20)
root, me = Path(sys.argv[1]), sys.argv[2]
train = c._train
def slow_train(*args):  # the first job holds the lock until the second has asked for the classifier
    (root / "a_training").touch()
    while not (root / "b_started").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    return train(*args)
c._train = slow_train
if me == "b":
    (root / "b_started").touch()
_, info = c.classifier_for(IdxSource("mnist", "MNIST", root, download=False), torch.device("cpu"))
print("sha", info["weights_sha256"])
"""


@pytest.mark.slow
def test_parallel_jobs_train_the_classifier_once(tmp_path):
    """Two sweep jobs asking at once: one trains, the other waits on the lock and loads its file."""
    make_idx(tmp_path, "MNIST", n=100)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = lambda me: subprocess.Popen([sys.executable, "-c", _JOB, str(tmp_path), me], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    a = job("a")
    t0 = time.monotonic()
    while not (tmp_path / "a_training").exists():  # a is training (under the lock) once b asks
        assert a.poll() is None and time.monotonic() - t0 < 120, a.stdout.read() if a.poll() is not None else "timeout"
        time.sleep(0.05)
    b = job("b")
    out_a, out_b = a.communicate(timeout=300)[0], b.communicate(timeout=300)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert "training ganlab's mnist evaluation classifier" in out_a
    assert "training ganlab's" not in out_b, out_b
    sha = lambda out: [line for line in out.splitlines() if line.startswith("sha ")]
    assert sha(out_a) == sha(out_b) and len(sha(out_a)) == 1
    assert len(_cached(tmp_path)) == 1


def test_a_read_only_data_dir_caches_in_the_user_cache(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    from ganlab.data.sources import IdxSource
    from ganlab.metrics.classifier import classifier_features

    make_idx(tmp_path / "ro", "MNIST", n=100)
    (tmp_path / "ro" / "MNIST" / "raw").chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, info = classifier_features(IdxSource("mnist", "MNIST", tmp_path / "ro", download=False), torch.device("cpu"))
    assert info["weights"].startswith(str(tmp_path / "cache" / "ganlab" / "classifiers"))


def _untrained(monkeypatch):
    """Where the classifier is cached, not how well it classifies, is under test: skip its training."""
    import ganlab.metrics.classifier as c

    monkeypatch.setattr(c, "_train", lambda x, y, n, device: (c.SmallCNN(x.shape[1], n).eval(), 0.0))


def test_a_system_data_dir_is_never_written_the_cache_goes_to_the_user_cache(tmp_path, monkeypatch):
    """Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, found through
    dataset.system_dirs) is writable for root: the classifier still goes to the user's cache."""
    from ganlab.data.sources import IdxSource
    from ganlab.metrics.classifier import classifier_features

    _untrained(monkeypatch)

    system = tmp_path / "share" / "datasets" / "fashion-mnist"
    make_idx(system, n=100, raw=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = IdxSource("fashion_mnist", "FashionMNIST", tmp_path / "empty", system_dirs=[system], download=False)
    _, info = classifier_features(src, torch.device("cpu"))
    assert info["weights"].startswith(str(tmp_path / "cache" / "ganlab" / "classifiers"))
    assert not list(system.glob("ganlab-classifier-*")) and not list(system.glob(".*lock"))


def test_a_data_dir_of_another_user_is_never_written(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    from ganlab.data.sources import IdxSource
    from ganlab.metrics.classifier import classifier_features

    _untrained(monkeypatch)
    make_idx(tmp_path / "theirs", "MNIST", n=100)
    raw = tmp_path / "theirs" / "MNIST" / "raw"
    os.chown(raw, 65534, 65534)  # nobody's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, info = classifier_features(IdxSource("mnist", "MNIST", tmp_path / "theirs", download=False), torch.device("cpu"))
    assert info["weights"].startswith(str(tmp_path / "cache" / "ganlab" / "classifiers"))
    assert not list(raw.glob("ganlab-classifier-*"))


def test_stacked_mnist_has_1000_modes_from_three_digits(digits_root):
    from ganlab.data.sources import IdxSource, StackedMnistSource

    mnist = IdxSource("mnist", "MNIST", digits_root, download=False)
    src = StackedMnistSource("stacked_mnist", digits_root, download=False, size=3000, seed=1)
    x, y = src.load()
    assert x.shape == (3000, 3, 28, 28) and x.dtype == torch.uint8 and int(y.max()) < 1000
    assert len(torch.unique(y)) > 900  # 3000 draws over 1000 equally likely modes: ~950 distinct
    digits, labels = mnist.load()
    lookup = {bytes(d.numpy().tobytes()): int(k) for d, k in zip(digits[:, 0], labels)}
    for i in range(20):  # every channel is an MNIST digit, and the label spells the three of them
        r, g, b = (lookup[bytes(x[i, c].numpy().tobytes())] for c in range(3))
        assert int(y[i]) == 100 * r + 10 * g + b
    again, _ = StackedMnistSource("stacked_mnist", digits_root, download=False, size=3000, seed=1).load()
    assert torch.equal(x, again)  # the same set in every run


@pytest.mark.slow
def test_stacked_mnist_modes_are_counted_with_the_mnist_classifier(digits_root):
    from ganlab.evaluate import Scorer, real_samples
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("conf/dataset/stacked_mnist.yaml")
    cfg.root, cfg.download, cfg.size, cfg.resolution = str(digits_root), False, 4000, RES  # the file's classifier
    source, real, hist = real_samples(cfg, 4000, seed=0)
    assert int(hist.sum()) == 4000 and len(hist) == 1000
    scorer = Scorer(source, real, "auto", device=torch.device("cpu"), real_hist=hist)
    assert scorer.protocol["features"].startswith("ganlab's mnist classifier") and "384-d" in scorer.protocol["features"]
    own = scorer(real[:2500])
    assert own["classes_captured"] > 850 and own["class_kl_uniform"] < 0.5
    # a generator that always repeats one red digit covers a tenth of the modes
    collapsed = real[:2500].clone()
    collapsed[:, 0] = real[0, 0]
    low = scorer(collapsed)
    assert low["classes_captured"] <= 100 and low["class_kl_uniform"] > own["class_kl_uniform"] + 1.5
    assert scorer.protocol["is_of_real_reference"] > 100  # ~1000 distinguishable stacked modes


@pytest.mark.slow
def test_eval_with_the_classifier_on_mnist_samples(digits_root, tmp_path):
    from ganlab.data.synthetic import digit_like

    imgs, _ = digit_like(300, size=RES, seed=9)
    np.savez(tmp_path / "x.npz", arr_0=imgs[..., None])
    out = cli("eval", f"target={tmp_path / 'x.npz'}", "dataset=mnist", f"dataset.root={digits_root}",
                  "dataset.download=false", f"dataset.resolution={RES}", "n=300", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "x.metrics.json").read_text())
    m, p = rec["metrics"], rec["protocol"]
    assert {"fd", "kid", "precision", "recall", "is", "is_std", "classes_captured", "class_kl"} <= set(m)
    assert m["classes_captured"] == 10 and m["class_kl"] < 0.1 and m["is"] > 5
    assert p["features"].startswith("ganlab's mnist classifier") and len(p["weights_sha256"]) == 64
    assert p["classifier_held_out_accuracy"] > 0.8 and p["metrics"] == ["fd", "kid", "prdc", "is", "classes"]
    # pixels give no class probabilities: asking for IS there is one clear error
    bad = cli("eval", f"target={tmp_path / 'x.npz'}", "dataset=mnist", f"dataset.root={digits_root}",
                  "dataset.download=false", f"dataset.resolution={RES}", "n=300", "features=pixels", "metrics=[fd,is]",
                  cwd=tmp_path)
    assert bad.returncode == 2 and "need class probabilities" in bad.stderr and "Traceback" not in bad.stderr

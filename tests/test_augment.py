"""GANs for data augmentation: dataset.subset (the scarce-data setting), `ganlab augment` (a labelled
synthetic set from a conditional run) and the Classification Accuracy Score through `ganlab eval`,
against its reference points (the real training set itself: high; labels shuffled: chance)."""

import json
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ganlab.augment import augment_run
from ganlab.config import validate
from ganlab.data.idx import write_idx
from ganlab.data.sources import IdxSource
from ganlab.errors import GanlabError
from conftest import cli, compose, digit_like, make_idx, run_cli


@pytest.fixture(scope="module")
def labelled_root(tmp_path_factory):
    """Tiny MNIST-layout IDX files with a train (256) and a test split (300, other strokes' noise)."""
    root = tmp_path_factory.mktemp("labelled")
    raw = make_idx(root, "MNIST", n=256)
    x, y = digit_like(300, seed=5)
    write_idx(raw / "t10k-images-idx3-ubyte", x)
    write_idx(raw / "t10k-labels-idx1-ubyte", y)
    return root


def test_subset_is_class_balanced_seeded_and_checked_before_reading(labelled_root):
    def load(n, seed=0):
        return IdxSource("mnist", "MNIST", labelled_root, subset=n, subset_seed=seed).load()

    x, y = load(30)
    assert len(x) == 30 and torch.bincount(y, minlength=10).tolist() == [3] * 10
    assert torch.equal(load(30)[0], x) and not torch.equal(load(30, seed=1)[0], x)
    assert len(load(25)[0]) == 25  # 25 = 3 of the first five classes, 2 of the others
    full, _ = IdxSource("mnist", "MNIST", labelled_root, subset=30).load_all()
    assert len(full) == 256  # what the metrics' reference and the evaluation classifier use
    for bad in (5, 0, "many", True):
        with pytest.raises(GanlabError, match="dataset.subset"):
            IdxSource("mnist", "MNIST", "/nonexistent", subset=bad)
    with pytest.raises(GanlabError, match="fewer than"):
        load(250)  # a class holds fewer than 25 of the 256


@pytest.mark.slow
def test_augment_exports_a_balanced_labelled_set_and_cas_reads_its_labels(labelled_root, tmp_path):
    # 16 px: the classifier recipe (400 steps of batch 128) is fixed, so the images are kept small
    data = [f"dataset.root={labelled_root}", "dataset.download=false", "dataset.resolution=16"]
    tiny = ["train.steps=20", "train.batch_size=32", "train.progress=none", "device=cpu"]
    cgan, gan = tmp_path / "cgan", tmp_path / "gan"
    for run, model in ((cgan, "cgan"), (gan, "gan")):
        r = cli("train", f"model={model}", "dataset=mnist", *data, *tiny, f"hydra.run.dir={run}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr

    syn = tmp_path / "syn.npz"
    r = run_cli("augment", f"run={cgan}", "n_per_class=30", f"out={syn}", cwd=tmp_path)
    assert r.returncode == 0 and "300 labelled samples (30 of each of 10 classes" in r.stdout, r.stderr
    f = np.load(syn)
    assert f["arr_0"].shape == (300, 16, 16, 1) and f["arr_0"].dtype == np.uint8
    assert np.bincount(f["labels"], minlength=10).tolist() == [30] * 10
    assert len(set(f["labels"][:10].tolist())) > 1  # shuffled, not class by class
    again = tmp_path / "again.npz"
    cli("augment", f"run={cgan}", "n_per_class=30", f"out={again}", cwd=tmp_path)
    assert np.array_equal(np.load(again)["arr_0"], f["arr_0"])  # same seed, same set

    # refusals: an unconditional run (augment and cas) through the CLI; a bad n_per_class, cas during training
    for args, message in ((["augment", f"run={gan}", f"out={tmp_path / 'x.npz'}"], "needs a conditional model"),
                          (["eval", f"target={gan}", "metrics=[cas]"], "cas needs a conditional model")):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, (args, r.stderr)
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(GanlabError, match="n_per_class"):
        augment_run(OmegaConf.create({"run": str(cgan), "n_per_class": 0, "out": str(tmp_path / "x.npz")}))
    with pytest.raises(GanlabError, match=re.escape("ganlab eval target=RUN_DIR metrics=[cas]")):
        validate(compose("model=cgan", "eval.metrics=[cas]"))
    nolabels = tmp_path / "nolabels.npz"
    np.savez(nolabels, arr_0=f["arr_0"])
    r = cli("eval", f"target={nolabels}", "metrics=[cas]", "dataset=mnist", *data, cwd=tmp_path)
    assert r.returncode == 2 and "ganlab augment" in r.stderr, r.stderr

    # CAS of the real training set (high) and of the same images with shuffled labels (chance), through
    # ganlab eval on .npz files; then of the cgan's own samples straight from its run dir
    real_x, real_y = IdxSource("mnist", "MNIST", labelled_root, resolution=16).load()
    scores = {}
    for name, labels in (("real", real_y), ("shuffled", real_y[torch.randperm(len(real_y))])):
        path = tmp_path / f"{name}.npz"
        np.savez(path, arr_0=real_x.permute(0, 2, 3, 1).numpy(), labels=labels.numpy())
        r = cli("eval", f"target={path}", "metrics=[cas]", "dataset=mnist", *data, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        record = json.loads(path.with_suffix(".metrics.json").read_text())
        scores[name] = record["metrics"]["cas"]
        assert record["protocol"]["cas"]["tested_on"] == "mnist test split, 300 images"
        assert record["protocol"]["cas"]["n_train"] == 256
    assert scores["real"] > 0.9 and scores["shuffled"] < 0.35, scores
    r = cli("eval", f"target={cgan}", "metrics=[cas]", "n=200", cwd=tmp_path)
    assert r.returncode == 0 and "cas" in r.stdout, r.stderr
    record = json.loads((cgan / "eval" / "last" / "metrics.json").read_text())
    assert 0.0 <= record["metrics"]["cas"] <= 1.0 and record["protocol"]["cas"]["n_train"] == 200
    assert "20 per class" in record["protocol"]["cas"]["trained_on"]

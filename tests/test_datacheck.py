"""`ganlab data check`: facts of a dataset (counts, sizes, range, duplicates, balance), unreadable
files named, and the evaluation classifier cached so the first run does not pay for it."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from ganlab.data.idx import write_idx
from ganlab.datacheck import check_data
from conftest import cli, digit_like, make_image_folder, run_cli


def _cfg(dataset: dict, cache: bool) -> OmegaConf:
    return OmegaConf.create({"dataset": dataset, "cache": cache, "device": "cpu"})


@pytest.mark.slow
def test_an_idx_set_reports_duplicates_balance_and_caches_the_classifier(tmp_path):
    x, y = digit_like(120, seed=3)
    x[7], y[7] = x[3], y[3]      # two exact duplicates of image 3
    x[50], y[50] = x[3], y[3]
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", x)
    write_idx(raw / "train-labels-idx1-ubyte", y)
    mnist = {"_target_": "ganlab.data.sources.IdxSource", "name": "mnist", "folder": "MNIST", "root": str(tmp_path),
             "download": False, "resolution": 16}  # 16 px: the classifier's fixed recipe runs 4x faster
    report = check_data(_cfg(mnist, cache=True))
    counts = np.bincount(y, minlength=10)
    assert report["images"] == 120 and report["channels"] == 1 and report["size"] == "16x16"
    from ganlab.data.sources import IdxSource

    small = IdxSource("mnist", "MNIST", tmp_path, download=False, resolution=16).load()[0].flatten(1).numpy()
    assert (report["min"], report["max"]) == (int(small.min()), int(small.max()))
    assert report["duplicates"] == len(small) - len(np.unique(small, axis=0)) >= 2  # numpy's count, ours planted 2
    assert [3, 7, 50] in report["duplicate_examples"]
    assert report["class_counts"] == counts.tolist() and report["per_class_min"] == counts.min()
    cached = report["evaluation_classifier"]["path"]
    assert cached.startswith(str(raw)), cached  # beside the user's own data
    # a second check (and so the first training run) loads it instead of training again
    assert check_data(_cfg(mnist, cache=True))["evaluation_classifier"]["path"] == cached


def test_a_folder_with_a_broken_file_is_named_and_the_check_fails(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n=6)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dup = sorted((root / "b").glob("*"))[0]
    (root / "b" / ("copy" + dup.suffix)).write_bytes(dup.read_bytes())
    r = run_cli("data", "check", "dataset=image_folder", f"dataset.root={root}", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "files" in r.stdout and "8" in r.stdout and "duplicates" in r.stdout  # the report is shown first
    assert "1 unreadable image file(s)" in r.stderr and "broken.png" in r.stderr and "Remove or replace" in r.stderr
    r = cli("data", "check", cwd=tmp_path)
    assert r.returncode == 2 and "dataset=NAME" in r.stderr

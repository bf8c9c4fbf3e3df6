"""`ganlab sample`: trained runs -> .npz in the layout FID tools read; weights only."""

import numpy as np
import pytest
import torch

from conftest import cli, make_idx, run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = root / "data"
    make_idx(data, n=64)
    common = ["device=cpu", "train.steps=4", "train.ckpt_every=2", "train.batch_size=16", "model.width=8"]
    made = {}
    for name, extra in {"points": ["model=gan", "dataset=ring8", "tricks.ema=0.9"],
                        "images": ["model=dcgan", "dataset=mnist", f"dataset.root={data}"],
                        "cond": ["model=cgan", "dataset=mnist", f"dataset.root={data}"]}.items():
        run = root / f"sweep/0_model={name},seed=1"  # a sweep-style name with '=' and ','
        out = cli("train", *common, *extra, f"hydra.run.dir={run}", cwd=root)
        assert out.returncode == 0, out.stderr
        made[name] = run
    return made


def test_images_become_uint8_nhwc(runs, tmp_path):
    out = run_cli("sample", f"run={runs['images']}", "n=10", f"out={tmp_path / 'x.npz'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    arr = np.load(tmp_path / "x.npz")["arr_0"]
    assert arr.shape == (10, 28, 28, 1) and arr.dtype == np.uint8 and arr.max() > 0


def test_points_are_float32_and_ema_is_a_choice(runs, tmp_path):
    for ema in ("true", "false"):
        out = cli("sample", f"run={runs['points']}", "n=7", f"ema={ema}", f"out={tmp_path / (ema + '.npz')}",
                      cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    a, b = (np.load(tmp_path / f"{e}.npz")["arr_0"] for e in ("true", "false"))
    assert a.shape == (7, 2) and a.dtype == np.float32
    assert not np.allclose(a, b)  # the EMA generator is another generator


def test_conditional_labels_and_numbered_checkpoints(runs, tmp_path):
    out = cli("sample", f"run={runs['cond']}", "labels=[1,1,4]", "checkpoint=2", f"out={tmp_path / 'c.npz'}",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    z = np.load(tmp_path / "c.npz")
    assert z["arr_0"].shape == (3, 28, 28, 1) and z["labels"].tolist() == [1, 1, 4]
    assert "step 2" in out.stdout


@pytest.mark.parametrize("args,fragment", [
    (["run={missing}"], "no such run dir or checkpoint"),
    (["run={points}", "labels=[1]"], "not conditional"),
    (["run={cond}", "labels=[12]"], "labels must lie in 0..9"),
    (["run={points}", "checkpoint=3"], "does not exist"),
    (["run={points}", "out={tmp}/x.txt"], "ending in .npz"),
    (["run={points}", "n=0"], "n=0 is not valid"),
])
def test_bad_sample_requests(args, fragment, runs, tmp_path):
    fill = {"missing": tmp_path / "nope", "points": runs["points"], "cond": runs["cond"], "tmp": tmp_path}
    out = cli("sample", *[a.format(**fill) for a in args], cwd=tmp_path)
    assert out.returncode == 2 and fragment in out.stderr and "Traceback" not in out.stderr


def test_checkpoints_load_with_weights_only(runs):
    state = torch.load(runs["cond"] / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["conditional"] is True

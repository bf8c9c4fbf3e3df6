"""What ganlab trusts (#44): no file it reads runs code, and no command writes over what it reads.

Crafted files would create a marker file if unpickled naively; every command that reads them must end in one
clear error (exit != 0, no traceback) and the marker must not exist. The writing commands refuse an out= that
is, contains or lies inside their input, or that would replace a file, unless overwrite=true, and never write
into a run's checkpoints; the input folders are hashed before and after."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganlab.errors import GanlabError
from ganlab.train import train
from conftest import cli, compose, make_cifar, run_cli


class _Marker:
    """Unpickled naively, this runs `touch <path>`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _no_traceback(out, *needles: str) -> None:
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


@pytest.mark.slow
def test_a_crafted_cifar_batch_is_refused_by_every_command_that_reads_it(tmp_path):
    root = tmp_path / "data"
    make_cifar(root)
    marker = tmp_path / "MARKER"
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "wb") as fh:
        pickle.dump({b"data": _Marker(marker), b"labels": [0]}, fh)
    common = ["dataset=cifar10", f"dataset.root={root}", "dataset.download=false"]
    for args in (["train", *common, "model=dcgan", "device=cpu", "train.steps=2", f"hydra.run.dir={tmp_path / 'run'}"],
                 ["data", "check", *common, "cache=false"]):
        out = run_cli(*args, cwd=tmp_path)
        _no_traceback(out, f"{batch} was refused", "posix.system")
        assert "ganlab runs no code from a file it reads" in out.stderr
        assert not marker.exists()


def test_a_crafted_checkpoint_or_weights_file_is_refused(tmp_path, data_root):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"step": 1, "config": {}, "generator": _Marker(marker)}, evil)
    for n, args in enumerate((["sample", f"run={evil}", f"out={tmp_path / 's.npz'}"],
                              ["train", "dataset=ring8", "device=cpu", "train.steps=2", f"resume={evil}"],
                              ["eval", f"target={evil}"])):
        out = (run_cli if n == 0 else cli)(*args, cwd=tmp_path)  # the real process once, the rest in this one
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert not marker.exists()
    for features in ("inception", "inception_fid"):  # Inception weights: torchvision's and torch-fidelity's
        np.savez(tmp_path / "x.npz", arr_0=np.zeros((12, 28, 28, 1), np.uint8))
        out = cli("eval", f"target={tmp_path / 'x.npz'}", "dataset=mnist", f"dataset.root={data_root}",
                      "dataset.download=false", f"features={features}",
                      f"inception_weights={evil}", cwd=tmp_path)
        _no_traceback(out, f"{evil} was refused", "posix.system")
        assert not marker.exists()


# ----------------------------------------------------------------------------------- out= rules
def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny trained runs (in-process, a few steps on generated data): conditional images, CycleGAN,
    inpainting; and a folder of images with masks."""
    root = tmp_path_factory.mktemp("trust")
    made = {}
    for name, extra in {"cond": ["model=dcgan", "model.conditional=true"], "cyclegan": ["model=cyclegan"],
                        "inpaint": ["model=inpaint"]}.items():
        train(compose("debug=smoke", *extra, "train.steps=2", "train.progress=none"), root / name)
        made[name] = root / name
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for rel in ("a.png", "sub/b.png"):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / rel)
    mask = root / "mask.png"
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 8)).save(mask)
    made["images"], made["mask"] = images, mask
    return made


def _writes(runs) -> dict[str, tuple[list[str], str]]:
    """command -> (its arguments but out=, the kind of out= it takes: a file suffix or '' for a folder)."""
    return {"sample": ([f"run={runs['cond']}", "n=4"], ".npz"),
            "augment": ([f"run={runs['cond']}", "n_per_class=1"], ".npz"),
            "interpolate": ([f"run={runs['cond']}", "n=2", "steps=3", "tensorboard=false"], ".png"),
            "translate": ([f"run={runs['cyclegan']}", f"in={runs['images']}"], ""),
            "inpaint": ([f"run={runs['inpaint']}", f"in={runs['images']}", f"mask={runs['mask']}"], "")}


def _command(name: str, *overrides: str):
    """The command's own function on its composed config (conf/<name>.yaml), in this process: what the CLI runs."""
    import importlib

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ganlab.cli import HYDRA_COMMANDS
    from ganlab.config import config_dir

    config, spec, _ = HYDRA_COMMANDS[name]
    module, _, function = spec.partition(":")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name=config, overrides=[o.replace("=", "='", 1) + "'" if "/" in o else o
                                                            for o in overrides])
    return getattr(importlib.import_module(module), function)(cfg)


@pytest.mark.parametrize("command", ["sample", "augment", "interpolate", "translate", "inpaint"])
def test_out_never_lands_on_or_in_what_the_command_reads(command, runs, tmp_path):
    args, suffix = _writes(runs)[command]
    run = Path(args[0].split("=", 1)[1])
    before = {"images": _digest(runs["images"]), "run": _digest(run)}
    name = "out" + suffix
    refused = [run / "checkpoints" / name, run / name]  # into the run's checkpoints; beside them (inside the input)
    if not suffix:
        refused += [runs["images"], runs["images"] / "sub", runs["images"].parent]  # is / inside / contains `in`
    for out in refused:
        with pytest.raises(GanlabError, match="(P|p)ick an out="):
            _command(command, *args, f"out={out}")
    out = tmp_path / name
    _command(command, *args, f"out={out}")
    written = _digest(tmp_path)
    with pytest.raises(GanlabError, match=r"exist\(s\) already.*overwrite=true"):  # would replace the first call's
        _command(command, *args, f"out={out}")
    assert _digest(tmp_path) == written
    _command(command, *args, f"out={out}", "overwrite=true")
    if not suffix:  # overwrite=true opens neither a run's checkpoints nor a run dir to a folder of outputs
        for where in (run, run / "checkpoints" / "x"):
            with pytest.raises(GanlabError, match="checkpoint"):
                _command(command, *args, f"out={where}", "overwrite=true")
    assert {"images": _digest(runs["images"]), "run": _digest(run)} == before


def test_a_refused_out_is_one_line_from_the_real_cli(runs, tmp_path):
    out = run_cli("translate", f"run={runs['cyclegan']}", f"in={runs['images']}", f"out={runs['images'] / 'sub'}",
                  cwd=tmp_path)
    _no_traceback(out, "ganlab: error: out=", "lies inside in=", "overwrite=true")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------- code a file names is not imported
def test_a_checkpoint_naming_a_module_outside_ganlab_does_not_get_it_imported(tmp_path, monkeypatch):
    """model.objective in a checkpoint's config is data: ganlab imports no module a file names (an import runs
    the module's code) unless the user lists it in $GANLAB_OBJECTIVES."""
    marker = tmp_path / "MARKER"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "ganlab_test_evilmod.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                                              "class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    run = tmp_path / "run"
    train(compose("debug=smoke", "model=gan", "dataset=ring8", "train.steps=2", "train.progress=none"), run)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["model"]["objective"] = "ganlab_test_evilmod.Thing"
    torch.save(state, run / "checkpoints" / "last.pt")
    for args in (["sample", f"run={run}", "n=4", f"out={tmp_path / 's.npz'}"], ["eval", f"target={run}", "n=20"]):
        out = cli(*args, cwd=tmp_path)
        _no_traceback(out, "ganlab imports no module that a file names", "GANLAB_OBJECTIVES=ganlab_test_evilmod")
        assert not marker.exists()
    out = cli("sample", f"run={run}", "n=4", f"out={tmp_path / 's.npz'}", cwd=tmp_path,
              GANLAB_OBJECTIVES="ganlab_test_evilmod")  # trusted by the user: imported (then refused as no Objective)
    assert out.returncode == 2 and marker.exists() and "is unknown" in out.stderr


def test_a_resume_adopts_no_override_from_the_run_dir_that_chooses_code(tmp_path):
    """`ganlab train resume=RUN_DIR` adopts the run's own overrides from .hydra/overrides.yaml (a file: data), but
    none that would choose code: `_target_`/`_args_` keys, model.objective, hydra settings, interpolations."""
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    first = cli("train", "model=gan", "dataset=ring8", "device=cpu", "train.steps=4", "train.progress=none",
                f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    saved = run / ".hydra" / "overrides.yaml"
    saved.write_text(saved.read_text() + f"- dataset._target_=posix.system\n- +dataset._args_=[touch {marker}]\n"
                     "- model.objective=ganlab_test_evilmod.Thing\n- hydra.searchpath=[file:///tmp]\n"
                     "- train.log_every=${oc.env:HOME}\n")
    out = cli("train", f"resume={run}", "train.steps=8", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not marker.exists()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 8  # the run's own settings

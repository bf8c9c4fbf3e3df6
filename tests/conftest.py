"""Shared test helpers: tiny generated datasets in torchvision's layouts, the real CLI in a
subprocess, Hydra composition of the real configs, and TensorBoard event files read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganlab.data.synthetic import digit_like, make_cifar, make_idx, make_image_folder, make_unpaired  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One data dir holding every image dataset, generated once per test session."""
    root = tmp_path_factory.mktemp("data")
    make_idx(root, "MNIST")
    make_idx(root, "FashionMNIST", gz=True)
    make_cifar(root)
    make_image_folder(root / "images")
    make_unpaired(root / "unpaired", n=24, size=28)
    return root


def dataset_overrides(name: str, root: Path) -> list[str]:
    if name == "image_folder":
        return [f"dataset.root={root / 'images'}"]
    if name == "unpaired":
        return [f"dataset.root_a={root / 'unpaired' / 'a'}", f"dataset.root_b={root / 'unpaired' / 'b'}",
                "dataset.resolution=32"]
    if name in ("ring8", "grid25", "mix1d", "generated"):
        return []
    if name == "stacked_mnist":
        return [f"dataset.root={root}", "dataset.download=false", "dataset.size=512"]
    return [f"dataset.root={root}", "dataset.download=false"]


def offline_env(**extra) -> dict:
    """The environment for CLI subprocesses: no terminal, no network (a dead proxy), one thread."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    dead = "http://127.0.0.1:9"
    env.update(https_proxy=dead, http_proxy=dead, HTTPS_PROXY=dead, HTTP_PROXY=dead, no_proxy="",
               OMP_NUM_THREADS="1", GANLAB_DATA_ROOT=str(extra.pop("data_root", "/nonexistent-ganlab-data")))
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """The real CLI (`python -m ganlab`, same as the `ganlab` script) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ganlab", *args], cwd=cwd, env=offline_env(**env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def read_events(tb_dir: Path):
    """TensorBoard's own event reader over a run's tb/ dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def compose(*overrides: str):
    """The real configs composed by Hydra, as `ganlab train` composes them (with the hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ganlab.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))

"""Shared test helpers: tiny generated datasets in torchvision's layouts, the real CLI in a
subprocess, Hydra composition of the real configs, and TensorBoard event files read back."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ganlab.data.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))


def digit_like(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images (N x size x size [x 3]) of class-dependent strokes, and their labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    imgs = np.zeros((n, size, size), np.float32)
    for i, k in enumerate(labels):
        angle = np.pi * k / 10 + rng.normal(0, 0.05)
        dist = np.abs(xx * np.sin(angle) - yy * np.cos(angle))
        ring = np.abs(np.hypot(xx, yy) - 0.1 - 0.02 * k)
        imgs[i] = np.clip(1.5 - 25 * np.minimum(dist, ring), 0, 1)
    imgs = (imgs * 255).astype(np.uint8)
    if channels == 3:
        imgs = np.stack([imgs, imgs[:, ::-1], imgs[:, :, ::-1]], axis=-1)
    return imgs, labels


def make_idx(root: Path, folder: str = "MNIST", n: int = 256, gz: bool = False, raw: bool = True) -> Path:
    """MNIST/Fashion-MNIST IDX files as torchvision lays them out: <root>/<folder>/raw/."""
    imgs, labels = digit_like(n)
    target = root / folder / "raw" if raw else root
    suffix = ".gz" if gz else ""
    write_idx(target / f"train-images-idx3-ubyte{suffix}", imgs)
    write_idx(target / f"train-labels-idx1-ubyte{suffix}", labels)
    return target


def make_cifar(root: Path, per_batch: int = 40) -> Path:
    """CIFAR-10 python pickles as torchvision lays them out: <root>/cifar-10-batches-py/."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        imgs, labels = digit_like(per_batch, size=32, channels=3, seed=i)
        data = imgs.transpose(0, 3, 1, 2).reshape(per_batch, -1)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, fh)
    return folder


def make_image_folder(root: Path, n: int = 24) -> Path:
    """A folder (with a subfolder) of PNG and JPEG images of mixed sizes."""
    from PIL import Image

    imgs, _ = digit_like(n, size=48, channels=3)
    for i, im in enumerate(imgs):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        pic = Image.fromarray(im).resize((48 + 8 * (i % 3), 48))
        pic.save(sub / (f"{i}.png" if i % 3 else f"{i}.jpg"))
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One data dir holding every image dataset, generated once per test session."""
    root = tmp_path_factory.mktemp("data")
    make_idx(root, "MNIST")
    make_idx(root, "FashionMNIST", gz=True)
    make_cifar(root)
    make_image_folder(root / "images")
    return root


def dataset_overrides(name: str, root: Path) -> list[str]:
    if name == "image_folder":
        return [f"dataset.root={root / 'images'}"]
    if name in ("ring8", "grid25"):
        return []
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

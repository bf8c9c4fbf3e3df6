"""Small generated datasets in the layouts real data come in (torchvision's IDX and CIFAR pickle
layouts, a folder of images): for the tests, the benchmark and offline demos. The images are
class-dependent strokes, so conditional models and classifiers have something to learn."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ganlab.data.idx import write_idx


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


def make_unpaired(root: Path, n: int = 24, size: int = 32) -> tuple[Path, Path]:
    """Two PNG folders for unpaired translation: digit-like strokes (A) and inverted strokes (B), drawn
    independently (no image of A has its inverse in B)."""
    from PIL import Image

    a_imgs, _ = digit_like(n, size=size, seed=1)
    b_imgs, _ = digit_like(n, size=size, seed=2)
    folders = (root / "a", root / "b")
    for folder, imgs in zip(folders, (a_imgs, 255 - b_imgs)):
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folders

"""GANs for data augmentation: the Classification Accuracy Score (Ravuri & Vinyals 2019) and the
accuracy of a classifier trained on real + synthetic data.

CAS: train a classifier on labelled SYNTHETIC data only, test it on the REAL test split. It asks
whether the conditional samples carry their class (a G that draws the wrong class, or one class
for all, scores low even with sharp images), which FID does not. The classifier and its recipe
are fixed (SmallCNN, the evaluation classifier's network, Adam 1e-3, >= 3 epochs and >= 400 steps of
batch 128, no augmentation, a fixed seed: ganlab.metrics.classifier.CAS), trained on the whole given set; numbers are
comparable when the recipe, the sample count and the test split are the same, which the
protocol records. The reference point is the CAS of the real training set itself (the same
recipe on real images; `ganlab eval target=real.npz metrics=[cas]`).
"""

from __future__ import annotations

import time

import torch
from omegaconf import OmegaConf

from ganlab.data.sources import build_source
from ganlab.errors import GanlabError
from ganlab.metrics.classifier import CAS, SEED, _train


def test_split(dataset_cfg):
    """(source, uint8 images, labels) of the dataset's real test split (the whole of it)."""
    cfg = OmegaConf.merge(dataset_cfg, {"split": "test"}) if "split" in dataset_cfg else None
    if cfg is None:
        raise GanlabError(f"dataset={dataset_cfg.name} has no test split; the accuracy scores are tested on real held-out "
                          "data: use mnist, fashion_mnist or cifar10.")
    if "subset" in cfg:
        cfg.subset = None
    source = build_source(cfg)
    if source.kind != "image" or not source.num_classes:
        raise GanlabError(f"dataset={dataset_cfg.name} is not a labelled image dataset; use mnist, fashion_mnist or cifar10.")
    x, y = source.load()
    return source, x, y


def accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
             n_classes: int, device, seed: int = SEED) -> float:
    """Test accuracy of the fixed-recipe classifier trained on ALL of (x_train uint8 N x C x H x W, y_train)."""
    if len(x_train) < n_classes:
        raise GanlabError(f"{len(x_train)} training images are too few to train a classifier on {n_classes} classes.")
    if tuple(x_train.shape[1:]) != tuple(x_test.shape[1:]):
        raise GanlabError(f"the training images are {tuple(x_train.shape[1:])} but the test split's are "
                          f"{tuple(x_test.shape[1:])}; score against the dataset (and resolution) the model was trained on.")
    net, _ = _train(x_train, y_train.long(), n_classes, device, held_out=0.0, seed=seed, recipe=CAS)
    net = net.to(device)
    correct = 0
    with torch.no_grad():
        for xs, ys in zip(x_test.split(1000), y_test.split(1000)):
            _, logits = net(xs.to(device).float() / 127.5 - 1)
            correct += int((logits.argmax(1).cpu() == ys).sum())
    return correct / len(x_test)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> uint8, rounded as saved images (and `ganlab sample`'s .npz) are."""
    return x.clamp(-1, 1).add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch.uint8)


def classification_accuracy_score(x: torch.Tensor, y: torch.Tensor, dataset_cfg, device, made_by: str) -> tuple[dict, dict]:
    """({"cas": accuracy on the real test split}, protocol) for labelled images x (uint8) with labels y."""
    source, x_test, y_test = test_split(dataset_cfg)
    n_classes = int(source.num_classes)
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise GanlabError(f"labels run from {int(y.min())} to {int(y.max())}, but {source.name} has classes 0..{n_classes - 1}.")
    counts = torch.bincount(y.long(), minlength=n_classes)
    t0 = time.monotonic()
    acc = accuracy(x, y, x_test, y_test, n_classes, device)
    protocol = {"cas": {
        "what": "Classification Accuracy Score (Ravuri & Vinyals 2019): a classifier trained on these labelled images "
                "only, tested on the real test split",
        "trained_on": made_by, "n_train": len(x), "per_class_min": int(counts.min()), "per_class_max": int(counts.max()),
        "tested_on": f"{source.name} test split, {len(x_test)} images",
        "classifier": f"SmallCNN, CAS recipe: {CAS.describe()}, no held-out part",
        "seconds": round(time.monotonic() - t0, 1)}}
    return {"cas": acc}, protocol

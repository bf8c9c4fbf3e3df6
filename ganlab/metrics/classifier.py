"""An evaluation network that needs no downloaded weights: a small CNN classifier per labelled
dataset (MNIST, Fashion-MNIST, CIFAR-10; Stacked MNIST uses MNIST's, one channel at a time),
trained ONCE by ganlab and cached beside the data.

Its 128-d penultimate activations are the feature space for the Fréchet distance, KID and
precision/recall; its softmax gives an Inception-style score and the predicted class histogram
(mode dropping shows up in its KL to the real one). The classifier is fixed by code, not by config
(architecture, optimiser, epochs, held-out split and seed below, versioned by CLASSIFIER_VERSION):
every run scores with the same network for the same data, and the protocol records its SHA-256 and
held-out accuracy.

Cache: `<data dir>/ganlab-classifier-<dataset>-<res>px-v<version>-<data fingerprint>.pt` when the
data dir is the user's own (owned by the user, outside /usr, /opt, ..., not a `dataset.system_dirs`
entry) and writable, else `$XDG_CACHE_HOME/ganlab/classifiers/` (default
~/.cache/ganlab/classifiers): never into a system data dir such as Debian's /usr/share/datasets. A file that does not load is retrained and replaced.
Parallel sweep jobs take a lock file beside the cache: one trains, the others wait and load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ganlab.errors import GanlabError

log = logging.getLogger("ganlab")

CLASSIFIER_VERSION = 2
BATCH = 128
LR = 1e-3
HELD_OUT = 0.1
SEED = 1234


@dataclass(frozen=True)
class Recipe:
    """How a SmallCNN is trained: whole epochs, at least `epochs` and `min_steps` steps (small datasets get more
    epochs), at most `max_steps` (None: no cap); every batch shifted by up to `shift` pixels each way (0: none);
    Adam's lr constant, or `cosine`-annealed to 0 over the run."""

    epochs: int
    min_steps: int
    max_steps: int | None = None
    shift: int = 0
    cosine: bool = False

    def describe(self) -> str:
        steps = f"max({self.epochs} epochs, {self.min_steps} steps)" + (f", at most {self.max_steps}" if self.max_steps else "")
        extras = ([f"random shifts of up to {self.shift} px"] if self.shift else []) + (["cosine lr"] if self.cosine else [])
        return f"Adam lr {LR}, batch {BATCH}, {steps}" + "".join(f", {e}" for e in extras) + f", seed {SEED}"


# v2 (the evaluation classifier): random shifts of up to 2 px and a cosine lr over up to 1,500 steps. On the
# 5,000 real MNIST digits of scripts/mnist_subset.py (500 held out) the held-out accuracy went from 0.974 (v1:
# 3 epochs or 400 steps, constant lr, no augmentation; 0.970 in a trial) to 0.980 (0.984 in a trial); GAN
# samples, which are a little off the real digits, are what a weak judge misreads most (docs/results.md
# section 11). Random rotations and scalings (grid_sample) scored no better than the shifts and cost 70% more.
EVALUATION = Recipe(epochs=40, min_steps=400, max_steps=1500, shift=2, cosine=True)
# the Classification Accuracy Score's recipe (ganlab.metrics.cas), v1's, unchanged: section 9's numbers stand
CAS = Recipe(epochs=3, min_steps=400)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks (32, 64, 128 channels), a 2x2 average pool, a 128-d
    feature layer and the class logits. ~99% on MNIST, ~75% on CIFAR-10 after 3 epochs."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        blocks, c = [], channels
        for width in (32, 64, 128):
            blocks += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c = width
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(4 * c, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return feats, self.head(feats)


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


_SYSTEM_PREFIXES = ("/usr/", "/opt/", "/srv/", "/etc/", "/lib/", "/nix/")


def users_own(folder: Path) -> bool:
    """A data dir the user owns, outside the system's folders: the only kind a cache is written into."""
    try:
        resolved = Path(folder).resolve()
        owner = resolved.stat().st_uid
    except OSError:
        return False
    return owner == os.getuid() and not str(resolved).startswith(_SYSTEM_PREFIXES)


def _cache_dirs(data_dir: Path, system: bool = False) -> tuple[list[Path], list[Path]]:
    """(where a cached classifier is looked for, where a new one may be written): beside the data
    when the data dir is the user's own, else (a system data dir such as Debian's
    /usr/share/datasets, found through dataset.system_dirs, or someone else's) only in the user's
    cache, $XDG_CACHE_HOME/ganlab/classifiers (~/.cache/ganlab/classifiers)."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    user = Path(xdg) / "ganlab" / "classifiers"
    own = not system and users_own(data_dir)
    return [data_dir, user], ([data_dir, user] if own else [user])


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _shift(x: torch.Tensor, most: int, g: torch.Generator) -> torch.Tensor:
    """Each image of x (N x C x H x W in [-1, 1]) moved by its own random whole-pixel offset in [-most, most]
    per axis; what moves in is background (-1)."""
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (most, most, most, most), value=-1.0)
    dy, dx = (torch.randint(0, 2 * most + 1, (n,), generator=g) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w + 2 * most).to(x.device)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w).to(x.device)
    return padded.gather(2, rows).gather(3, cols)


def _train(x: torch.Tensor, y: torch.Tensor, n_classes: int, device: torch.device, held_out: float = HELD_OUT,
           seed: int = SEED, recipe: Recipe | None = None) -> tuple[SmallCNN, float]:
    """Train on (1 - held_out) of (x uint8, y), return the net (eval mode, CPU) and held-out accuracy
    (nan when nothing is held out). The recipe is fixed: EVALUATION for the evaluation classifier, CAS for
    the Classification Accuracy Score (ganlab.metrics.cas); None: EVALUATION."""
    recipe = recipe or EVALUATION
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_test = max(1, int(len(x) * held_out)) if held_out > 0 and len(x) >= 20 else 0
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    net = SmallCNN(x.shape[1], n_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xd, yd = x.to(device), y.to(device)
    batch = min(BATCH, len(train_idx))
    net.train()
    per_epoch = max(1, len(train_idx) // batch)
    total = max(recipe.epochs, -(-recipe.min_steps // per_epoch)) * per_epoch  # whole epochs ...
    if recipe.max_steps is not None:
        total = min(total, recipe.max_steps)  # ... unless capped
    step = 0
    for _ in range(-(-total // per_epoch)):
        order = train_idx[torch.randperm(len(train_idx), generator=g)].to(device)
        for start in range(0, len(order) - batch + 1, batch):
            if step == total:
                break
            idx = order[start:start + batch]
            xb = xd[idx].float() / 127.5 - 1
            if recipe.shift:
                xb = _shift(xb, recipe.shift, g)
            if recipe.cosine:
                for group in opt.param_groups:
                    group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / total))
            _, logits = net(xb)
            loss = nn.functional.cross_entropy(logits, yd[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    net.eval()
    correct = 0
    with torch.no_grad():
        for chunk in test_idx.split(1000):
            _, logits = net(xd[chunk.to(device)].float() / 127.5 - 1)
            correct += int((logits.argmax(1) == yd[chunk.to(device)]).sum())
    torch.set_rng_state(torch_state)
    return net.cpu(), correct / max(n_test, 1) if n_test else float("nan")


def classifier_for(source, device: torch.device) -> tuple[SmallCNN, dict]:
    """The cached classifier of an in-memory labelled image source (trained now if there is none)."""
    if getattr(source, "kind", None) != "image" or not getattr(source, "in_memory", False) \
            or not getattr(source, "num_classes", None):
        raise GanlabError(
            f"features=classifier needs a labelled in-memory image dataset (mnist, fashion_mnist, cifar10, "
            f"stacked_mnist), not {source.name}; use eval.features=pixels or inception."
        )
    x, y = source.load_all() if hasattr(source, "load_all") else source.load()  # the whole split, dataset.subset or not
    fp = _fingerprint(x, y)
    name = f"ganlab-classifier-{source.name}-{source.resolution}px-v{CLASSIFIER_VERSION}-{fp}.pt"
    dirs, writable = _cache_dirs(Path(source.data_dir()), system=source.data_dir_is_system())
    cached = _load_cached(dirs, name, x.shape[1], quiet=True)  # the common case, without waiting for the lock
    if cached is not None:
        return cached[0].to(device), cached[1]
    folder = next((d for d in writable if _writable(d)), None)
    if folder is None:
        raise GanlabError(f"cannot cache the evaluation classifier: none of {', '.join(map(str, writable))} is "
                          "writable; set XDG_CACHE_HOME=DIR to a writable folder.")
    with _exclusive(folder / f".{name}.lock"):
        cached = _load_cached(dirs, name, x.shape[1])  # another job may have trained it while this one waited
        if cached is not None:
            return cached[0].to(device), cached[1]
        log.info(f"training ganlab's {source.name} evaluation classifier once ({len(x):,} images: {EVALUATION.describe()}); "
                 f"it is cached in {folder}")
        t0 = time.monotonic()
        net, accuracy = _train(x, y, int(source.num_classes), device)
        meta = {"dataset": source.name, "resolution": int(source.resolution), "version": CLASSIFIER_VERSION,
                "data_fingerprint": fp, "n_train": len(x) - max(1, int(len(x) * HELD_OUT)) if len(x) >= 20 else len(x),
                "held_out_accuracy": accuracy, "train_seconds": round(time.monotonic() - t0, 1)}
        path = folder / name
        buf = io.BytesIO()
        torch.save({"state_dict": net.state_dict(), "n_classes": int(source.num_classes), "meta": meta}, buf)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    log.info(f"classifier: held-out accuracy {accuracy:.4f}, {meta['train_seconds']}s, saved to {path}")
    return net.eval().to(device), {**meta, "path": str(path), "weights_sha256": hashlib.sha256(buf.getvalue()).hexdigest()}


def _load_cached(dirs: list[Path], name: str, channels: int, quiet: bool = False) -> tuple[SmallCNN, dict] | None:
    """The first cached classifier that loads (on the CPU), or None (`quiet`: say nothing of one that
    does not load; the check under the lock will)."""
    for folder in dirs:
        path = folder / name
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                net = SmallCNN(channels, int(saved["n_classes"]))
                net.load_state_dict(saved["state_dict"])
                info = dict(saved["meta"])
            except Exception as exc:
                if not quiet:
                    log.warning(f"{path} does not load ({type(exc).__name__}); training the classifier again.")
                continue
            info.update(path=str(path), weights_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
            return net.eval(), info
    return None


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An exclusive advisory lock (POSIX flock; elsewhere none: parallel jobs then each train,
    and the atomic replace keeps the cache whole). Released when the process dies, too."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def classifier_features(source, device: torch.device):
    """(extract(x in [-1, 1]) -> (N x F features, N x K class probabilities), protocol dict).

    Stacked MNIST: MNIST's classifier on each channel; features concatenated (384-d), the 1000-mode
    probabilities the product of the three digits' (mode = 100 r + 10 g + b)."""
    stacked = hasattr(source, "mnist")
    base = source.mnist if stacked else source
    net, info = classifier_for(base, device)

    @torch.no_grad()
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, probs = [], []
        for chunk in x.split(500):
            f, logits = net(chunk.to(device).float())
            feats.append(f.double().cpu())
            probs.append(logits.double().softmax(1).cpu())
        return torch.cat(feats), torch.cat(probs)

    def extract(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not stacked:
            return run(x)
        parts = [run(x[:, c:c + 1]) for c in range(3)]
        feats = torch.cat([f for f, _ in parts], 1)
        p0, p1, p2 = (p for _, p in parts)
        probs = (p0[:, :, None, None] * p1[:, None, :, None] * p2[:, None, None, :]).flatten(1)
        return feats, probs

    what = (f"ganlab's {base.name} classifier (SmallCNN v{CLASSIFIER_VERSION}), 128-d penultimate layer"
            + (" per channel, concatenated (384-d); modes = product of the 3 digits' softmax" if stacked else ""))
    return extract, {"features": what, "weights": info["path"], "weights_sha256": info["weights_sha256"],
                     "classifier_version": info["version"], "classifier_held_out_accuracy": info["held_out_accuracy"],
                     "classifier_data_fingerprint": info["data_fingerprint"],
                     "resize": "none (native resolution)", "grayscale_to_rgb": "none"}

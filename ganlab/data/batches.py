"""Batches on the training device.

- In-memory image sets live on the device as ONE uint8 tensor; every epoch is a seeded
  permutation, cut into full batches (the last partial batch is dropped, as BatchNorm wants).
  A batch may be asked for with its own size (PG-GAN's batch per resolution): the epoch is then
  cut into batches of the sizes asked for, and the position is kept in samples.
- Disk-backed sets (image_folder) go through a DataLoader with workers, in the same kind of
  seeded per-epoch order, so a resumed run reads on from where it stopped.
- 2D mixtures are sampled on the device for every batch.
- Two unpaired image domains (CycleGAN) live on the device like in-memory sets, each in its own order.
All of them hand out (x, y): x float in [-1, 1] on the device, y the labels (or None); unpaired
domains hand out (images of A, images of B).

Under torchrun (ganlab.distributed) `batch_size` is the global batch and `next()` hands out this rank's
contiguous slice of each global batch of the one seeded order every rank shares: the ranks' samples are
disjoint, together they are exactly what one process would train on, and the saved position counts
global samples, so a resume on another world size reads on in the same order.
"""

from __future__ import annotations

import torch

from ganlab import distributed
from ganlab.errors import GanlabError


def to_unit_range(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [0, 255] -> float [-1, 1] (the range of G's tanh output)."""
    return x_uint8.float().div_(127.5).sub_(1.0)


class DeviceBatches:
    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, batch_size: int, seed: int, device: torch.device):
        if batch_size > len(x):
            raise GanlabError(
                f"train.batch_size={batch_size} is larger than the dataset ({len(x)} samples); use a smaller batch."
            )
        self.x = x.to(device)
        self.y = None if y is None else y.to(device)
        self.batch_size, self.device = batch_size, device
        self.rank, self.world = distributed.rank(), distributed.world()
        self.local = distributed.local_batch(batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.offset = 0, 0  # samples of this epoch's order handed out
        self._perm = self._new_perm()

    def _new_perm(self) -> torch.Tensor:
        self._epoch_state = self.generator.get_state()  # what produced this epoch's order
        return torch.randperm(len(self.x), generator=self.generator).to(self.device, non_blocking=True)

    def next(self, n: int | None = None):
        """The next n samples (default: this rank's share of train.batch_size) of this epoch's order: this
        rank's slice of the next global batch of n x world; a new epoch when fewer than that are left (they
        are dropped, like a last partial batch)."""
        n = self.local if n is None else n
        total = n * self.world
        if total > len(self.x):
            raise GanlabError(f"a batch of {total} is larger than the dataset ({len(self.x)} samples); use smaller batches.")
        if self.offset + total > len(self.x):
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self._new_perm()
        start = self.offset + self.rank * n
        idx = self._perm[start:start + n]
        self.offset += total
        return to_unit_range(self.x[idx]), (None if self.y is None else self.y[idx])

    @property
    def size(self) -> int:
        """The number of samples in the data (an epoch's worth)."""
        return len(self.x)

    def check(self, n: int, what: str) -> None:
        """Raise now what `next` would raise for a global batch of n (an objective's later batch sizes)."""
        if n > len(self.x):
            raise GanlabError(f"{what}={n} is larger than the dataset ({len(self.x)} samples); use smaller batches.")
        distributed.local_batch(n, what)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "generator": self._epoch_state}

    def preview(self, n: int) -> torch.Tensor:
        """The first n images (no draw from the training order, so resumes stay exact)."""
        return to_unit_range(self.x[:n])

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm = self._new_perm()
        # checkpoints from before batches of any size counted whole batches ("pos")
        self.epoch = state["epoch"]
        self.offset = int(state["offset"]) if "offset" in state else int(state["pos"]) * self.batch_size


class _EpochOrder(torch.utils.data.Sampler):
    """The DataLoader's sample order: a permutation drawn from (seed, epoch) alone, cut into global batches
    of `world` x `local` samples, of which this rank reads its own slice from global batch `start` on, so
    any position in any epoch can be rebuilt (on any world size)."""

    def __init__(self, n: int, seed: int, local: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0
        self.local, self.rank, self.world = local, rank, world
        self.per_epoch = n // (local * world)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        glob = self.local * self.world
        mine = [perm[b * glob + self.rank * self.local: b * glob + (self.rank + 1) * self.local]
                for b in range(self.start, self.per_epoch)]
        return iter(torch.cat(mine).tolist() if mine else [])

    def __len__(self) -> int:
        return (self.per_epoch - self.start) * self.local


class LoaderBatches:
    def __init__(self, dataset, batch_size: int, seed: int, device: torch.device, num_workers: int):
        if batch_size > len(dataset):
            raise GanlabError(
                f"train.batch_size={batch_size} is larger than the dataset ({len(dataset)} images); use a smaller batch."
            )
        self.device, self.batch_size = device, distributed.local_batch(batch_size)  # this rank's share
        self.per_epoch = len(dataset) // batch_size
        self.order = _EpochOrder(len(dataset), seed, self.batch_size, distributed.rank(), distributed.world())
        self.pos = 0  # (global) batches handed out in this epoch
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, sampler=self.order, drop_last=True, num_workers=num_workers,
            pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        )
        self._it = iter(self.loader)

    def next(self, n: int | None = None):
        """The next batch; n (a multiple of train.batch_size) joins n / batch_size of the loader's batches."""
        k = 1 if n is None else n // self.batch_size
        if n is not None and n > len(self.loader.dataset):
            raise GanlabError(f"a batch of {n} is larger than the dataset ({len(self.loader.dataset)} images); "
                              "use smaller batches.")
        if k < 1 or k * self.batch_size != (n or self.batch_size):
            raise GanlabError(f"a batch of {n} images from a disk-backed dataset must be a multiple of "
                              f"train.batch_size={self.batch_size}; set train.batch_size to a divisor of every batch size.")
        parts = []
        for _ in range(k):
            if self.pos >= self.per_epoch:
                self._seek(self.order.epoch + 1, 0)
            parts.append(next(self._it)[0])
            self.pos += 1
        x = parts[0] if k == 1 else torch.cat(parts)
        return to_unit_range(x.to(self.device, non_blocking=True)), None

    @property
    def size(self) -> int:
        """The number of images in the data (an epoch's worth)."""
        return len(self.loader.dataset)

    def check(self, n: int, what: str) -> None:
        """Raise now what `next` would raise for a global batch of n (an objective's later batch sizes)."""
        if n > len(self.loader.dataset):
            raise GanlabError(f"{what}={n} is larger than the dataset ({len(self.loader.dataset)} images); use smaller "
                              "batches.")
        if distributed.local_batch(n, what) % self.batch_size:
            raise GanlabError(f"{what}={n}: a batch from a disk-backed dataset must be a multiple of "
                              f"train.batch_size={self.batch_size}; set train.batch_size to a divisor of every batch size.")

    def preview(self, n: int) -> torch.Tensor:
        ds = self.loader.dataset
        return to_unit_range(torch.stack([ds[i][0] for i in range(min(n, len(ds)))]).to(self.device))

    def _seek(self, epoch: int, pos: int) -> None:
        self.order.epoch, self.order.start, self.pos = epoch, pos, pos
        self._it = iter(self.loader)  # workers (persistent) start on the new order

    def state_dict(self) -> dict:
        return {"epoch": self.order.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" in state:  # checkpoints written before the order was restorable hold {}
            self._seek(int(state["epoch"]), int(state["pos"]))


class UnpairedBatches:
    """Two image domains (ganlab.data.sources.UnpairedSource) on the device, each in its own seeded
    epoch order: `next(n)` is (n images of A, n images of B), each a random crop of the source's
    resolution out of its load-size image and flipped left-right with probability 0.5 when the source
    says so (both drawn from the torch RNG on the device, which checkpoints restore)."""

    def __init__(self, source, batch_size: int, seed: int, device: torch.device):
        data = source.load()
        self.a = DeviceBatches(data["a"], None, batch_size, seed, device)
        self.b = DeviceBatches(data["b"], None, batch_size, seed + 1, device)
        self.flip, self.device, self.size = source.flip, device, source.resolution

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        n, room = x.shape[0], x.shape[-1] - self.size
        if room > 0:  # a random crop per image: offsets in [0, room]
            off = (distributed.rows(torch.rand, n, 2, device=self.device) * (room + 1)).long().clamp_(max=room)
            span = torch.arange(self.size, device=self.device)
            rows, cols = off[:, 0, None] + span, off[:, 1, None] + span  # n x size each
            x = x[torch.arange(n, device=self.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            x = x.permute(0, 3, 1, 2)  # advanced indexing put the channels last
        if not self.flip:
            return x
        mirrored = distributed.rows(torch.rand, n, device=self.device) < 0.5
        return torch.where(mirrored[:, None, None, None], x.flip(-1), x)

    def next(self, n: int | None = None):
        return self._jitter(self.a.next(n)[0]), self._jitter(self.b.next(n)[0])

    def preview(self, n: int) -> torch.Tensor:
        from ganlab.data.sources import center_crop

        return center_crop(torch.cat([self.a.preview(n // 2), self.b.preview(n - n // 2)]), self.size)

    def state_dict(self) -> dict:
        return {"a": self.a.state_dict(), "b": self.b.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.a.load_state_dict(state["a"])
        self.b.load_state_dict(state["b"])


class PointBatches:
    def __init__(self, source, batch_size: int, seed: int, device: torch.device):
        self.source, self.batch_size, self.device = source, batch_size, device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def next(self, n: int | None = None):
        """n points (default: this rank's share of the batch): under torchrun this rank's rows of the global draw."""
        n = distributed.local_batch(self.batch_size) if n is None else n
        w = distributed.world()
        if w == 1:
            return self.source.sample(n, self.generator, self.device)
        x, y = self.source.sample(n * w, self.generator, self.device)
        r = distributed.rank()
        return x[r * n:(r + 1) * n], y[r * n:(r + 1) * n]

    def preview(self, n: int) -> torch.Tensor:
        """n points of a fixed draw (not from the training stream, so resumes stay exact)."""
        return self.source.sample(n, torch.Generator(device=self.device).manual_seed(0), self.device)[0]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def build_batches(source, batch_size: int, seed: int, device: torch.device, num_workers: int = 0):
    if source.kind == "points":
        return PointBatches(source, batch_size, seed, device)
    if source.kind == "unpaired":
        return UnpairedBatches(source, batch_size, seed, device)
    if source.in_memory:
        x, y = source.load()
        if source.num_classes is None:
            y = None
        return DeviceBatches(x, y, batch_size, seed, device)
    return LoaderBatches(source.dataset(), batch_size, seed, device, num_workers)

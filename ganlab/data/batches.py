"""Batches on the training device.

- In-memory image sets live on the device as ONE uint8 tensor; every epoch is a seeded
  permutation, cut into full batches (the last partial batch is dropped, as BatchNorm wants).
- Disk-backed sets (image_folder) go through a DataLoader with workers.
- 2D mixtures are sampled on the device for every batch.
All of them hand out (x, y): x float in [-1, 1] on the device, y the labels (or None).
"""

from __future__ import annotations

import torch

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
        self.per_epoch = len(x) // batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self._perm = self._new_perm()

    def _new_perm(self) -> torch.Tensor:
        self._epoch_state = self.generator.get_state()  # what produced this epoch's order
        return torch.randperm(len(self.x), generator=self.generator).to(self.device, non_blocking=True)

    def next(self):
        if self.pos >= self.per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._new_perm()
        idx = self._perm[self.pos * self.batch_size:(self.pos + 1) * self.batch_size]
        self.pos += 1
        return to_unit_range(self.x[idx]), (None if self.y is None else self.y[idx])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "generator": self._epoch_state}

    def preview(self, n: int) -> torch.Tensor:
        """The first n images (no draw from the training order, so resumes stay exact)."""
        return to_unit_range(self.x[:n])

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm = self._new_perm()
        self.epoch, self.pos = state["epoch"], state["pos"]


class LoaderBatches:
    def __init__(self, dataset, batch_size: int, seed: int, device: torch.device, num_workers: int):
        if batch_size > len(dataset):
            raise GanlabError(
                f"train.batch_size={batch_size} is larger than the dataset ({len(dataset)} images); use a smaller batch."
            )
        self.device = device
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )
        self._it = iter(self.loader)

    def next(self):
        try:
            x, y = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            x, y = next(self._it)
        return to_unit_range(x.to(self.device, non_blocking=True)), None

    def preview(self, n: int) -> torch.Tensor:
        ds = self.loader.dataset
        return to_unit_range(torch.stack([ds[i][0] for i in range(min(n, len(ds)))]).to(self.device))

    def state_dict(self) -> dict:
        # A DataLoader's position is not restorable: a resumed run re-shuffles (not bit-exact).
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PointBatches:
    def __init__(self, source, batch_size: int, seed: int, device: torch.device):
        self.source, self.batch_size, self.device = source, batch_size, device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def next(self):
        return self.source.sample(self.batch_size, self.generator, self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def build_batches(source, batch_size: int, seed: int, device: torch.device, num_workers: int = 0):
    if source.kind == "points":
        return PointBatches(source, batch_size, seed, device)
    if source.in_memory:
        x, y = source.load()
        if source.num_classes is None:
            y = None
        return DeviceBatches(x, y, batch_size, seed, device)
    return LoaderBatches(source.dataset(), batch_size, seed, device, num_workers)

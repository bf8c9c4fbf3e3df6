"""LapGAN (Denton et al. 2015): a Laplacian pyramid of generative models, sampled coarse to fine.

The pyramid of an image I_0 (down: 2x2 average pooling, up: bilinear x2):
    I_{k+1} = down(I_k),  h_k = I_k - up(I_{k+1}) for k < K,  and the low-pass I_K at the top,
so that I_k = up(I_{k+1}) + h_k rebuilds the image exactly (`collapse`). Level K (the coarsest) is an
unconditional GAN on I_K; each finer level k a conditional GAN: G_k(noise, l) generates the band-pass
residual h~_k from a noise plane and the low-pass l = up(I_{k+1}), and D_k judges (h, l) pairs.
Sampling: I~_K = G_K(z); I~_k = up(I~_{k+1}) + G_k(noise_k, up(I~_{k+1})).

Nets (the paper's CIFAR-10 models, widths per level in model.widths, finest first):
- level K: MLPs (two hidden ReLU layers of widths[K] units in G, LeakyReLU in D), tanh output;
- level k < K: G_k a 3-layer 3x3 conv net on [l, noise plane] (the paper feeds the noise as an extra
  colour plane), ReLU inside, a linear output (residuals are signed); D_k 3x3 conv, two 4x4 stride-2
  convs (LeakyReLU 0.2), a linear score, on [h, l] stacked as channels.
Class-conditional (model.conditional=true): a label embedding joined to z at level K, one-hot label
maps stacked on the inputs of every conv net and one-hot features joined to the MLP D's input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab import distributed
from ganlab.errors import GanlabError

SUPPORTS = ("image",)


def down(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2)


def up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """[h_0, ..., h_{K-1}, I_K]: the band-pass residuals finest first, then the low-pass top (K = levels - 1)."""
    out = []
    for _ in range(levels - 1):
        low = down(x)
        out.append(x - up(low))
        x = low
    return out + [x]


def collapse(pyr: list[Tensor]) -> Tensor:
    """The image a pyramid describes: I_k = up(I_{k+1}) + h_k from the top down."""
    x = pyr[-1]
    for h in reversed(pyr[:-1]):
        x = up(x) + h
    return x


def level_sizes(size: int, levels: int, name: str = "lapgan") -> list[int]:
    """The image size at each level, finest first; the data's size must halve evenly levels - 1 times."""
    if size % 2 ** (levels - 1) or size // 2 ** (levels - 1) < 4:
        raise GanlabError(f"model={name} with model.levels={levels} needs images whose size halves evenly to at least "
                          f"4 px {levels - 1} times; the data are {size} px. Lower model.levels or set "
                          f"dataset.resolution (e.g. 32).")
    return [size // 2 ** k for k in range(levels)]


def _label_maps(y: Tensor | None, num_classes: int | None, like: Tensor) -> list[Tensor]:
    if not num_classes:
        return []
    onehot = F.one_hot(y, num_classes).to(like.dtype)
    return [onehot[:, :, None, None].expand(-1, -1, *like.shape[2:])]


class CoarseGenerator(nn.Module):
    """Level K: z (+ label embedding) -> MLP -> a tanh image of the top size."""

    def __init__(self, z_dim: int, channels: int, size: int, hidden: int, num_classes: int | None, embed_dim: int):
        super().__init__()
        self.z_dim, self.shape, self.num_classes = z_dim, (channels, size, size), num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.net = nn.Sequential(nn.Linear(z_dim + (embed_dim if num_classes else 0), hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, channels * size * size), nn.Tanh())

    def forward(self, z: Tensor, l: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.net(z).view(-1, *self.shape)


class CoarseDiscriminator(nn.Module):
    def __init__(self, channels: int, size: int, hidden: int, num_classes: int | None):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Linear(channels * size * size + (num_classes or 0), hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, l: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        h = x.flatten(1)
        if self.num_classes:
            h = torch.cat([h, F.one_hot(y, self.num_classes).to(h.dtype)], dim=1)
        return self.net(h).view(-1)


class ResidualGenerator(nn.Module):
    """Level k < K: [l, noise plane (, label maps)] -> 3 x conv3x3 -> the residual h~_k (linear)."""

    def __init__(self, channels: int, width: int, num_classes: int | None):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Conv2d(channels + 1 + (num_classes or 0), width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, noise: Tensor, l: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(torch.cat([l, noise.to(l.dtype), *_label_maps(y, self.num_classes, l)], dim=1))


class PairDiscriminator(nn.Module):
    """Level k < K: a score for the pair (h, l) stacked as channels (+ label maps)."""

    def __init__(self, channels: int, size: int, width: int, num_classes: int | None):
        super().__init__()
        self.num_classes = num_classes
        out = size // 2 // 2
        self.net = nn.Sequential(nn.Conv2d(2 * channels + (num_classes or 0), width, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                                 nn.Linear(width * out * out, 1))

    def forward(self, h: Tensor, l: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(torch.cat([h, l.to(h.dtype), *_label_maps(y, self.num_classes, h)], dim=1)).view(-1)


def build(model_cfg, shape: tuple[int, ...], num_classes: int | None) -> tuple[list[nn.Module], list[nn.Module]]:
    """([G_0, ..., G_K], [D_0, ..., D_K]) for data of `shape` (C, H, W), finest level first."""
    levels, widths = model_cfg.levels, list(model_cfg.widths)
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise GanlabError(f"model.levels={levels!r} is not valid: give a number of pyramid levels >= 1 (the paper: 3 "
                          "at 32 px, 4 at 64 px).")
    if len(widths) != levels or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise GanlabError(f"model.widths={widths} is not valid: give one positive width per level, finest first "
                          f"({levels} of them, e.g. [64,64,600]: conv channels, then the top level's MLP units).")
    channels, size = int(shape[0]), int(shape[-1])
    if int(shape[-2]) != size:
        raise GanlabError(f"model={model_cfg.name} needs square images; the data are {shape[-2]}x{size}.")
    sizes = level_sizes(size, levels, model_cfg.name)
    top = levels - 1
    gens = [ResidualGenerator(channels, widths[k], num_classes) for k in range(top)]
    discs = [PairDiscriminator(channels, sizes[k], widths[k], num_classes) for k in range(top)]
    embed = int(model_cfg.embed_dim) if num_classes else 0
    gens.append(CoarseGenerator(int(model_cfg.z_dim), channels, sizes[top], widths[top], num_classes, embed))
    discs.append(CoarseDiscriminator(channels, sizes[top], widths[top], num_classes))
    return gens, discs


class LapSampler(nn.Module):
    """The pyramid's generators as one sampler of the lab: g(z, y) -> I~_0 in [-1, 1], coarse to fine.
    `trace`, a list, receives (k, l, h~, I~_k) per level on the way down (TensorBoard's per-level grids)."""

    def __init__(self, gens: list[nn.Module]):
        super().__init__()
        self.gens = nn.ModuleList(gens)
        self.z_dim, self.num_classes = gens[-1].z_dim, gens[-1].num_classes

    @property
    def conditional(self) -> bool:
        return bool(self.num_classes)

    def forward(self, z: Tensor, y: Tensor | None = None, trace: list | None = None) -> Tensor:
        top = len(self.gens) - 1
        x = self.gens[top](z, None, y)
        if trace is not None:
            trace.append((top, None, None, x))
        for k in reversed(range(top)):
            l = up(x)
            h = self.gens[k](distributed.rows(torch.randn, l.shape[0], 1, *l.shape[2:], device=l.device), l, y)
            x = l + h
            if trace is not None:
                trace.append((k, l, h, x))
        return x.clamp(-1, 1)

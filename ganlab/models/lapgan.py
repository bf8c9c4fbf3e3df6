"""LapGAN (Denton et al. 2015): a Laplacian pyramid of generative models, sampled coarse to fine.

The pyramid of an image I_0 (down: 2x2 average pooling, up: bilinear x2):
    I_{k+1} = down(I_k),  h_k = I_k - up(I_{k+1}) for k < K,  and the low-pass I_K at the top,
so that I_k = up(I_{k+1}) + h_k rebuilds the image exactly (`collapse`). Level K (the coarsest) is a
GAN on I_K; each finer level k a conditional GAN: G_k(noise, l) generates the band-pass residual h~_k
from a noise plane and the low-pass l = up(I_{k+1}), and D_k judges h + l, the residual added to its
low-pass image before the first layer (the paper, section 3.1). Sampling: I~_K = G_K(z);
I~_k = up(I~_{k+1}) + G_k(noise_k, up(I~_{k+1})).

The nets are the paper's CIFAR-10 models as the authors' code (facebookarchive/eyescream, cifar/scripts)
builds them; the conv widths per level in model.widths, finest first, the top level's units last:
- level K: MLPs. G: [u, one-hot] -> 2 hidden ReLU layers of 2 x widths[K] units (the paper's 1200) ->
  a linear image; D: [I flattened, one-hot] -> 2 hidden ReLU layers of widths[K] units (600), each
  followed by dropout -> a linear score;
- level k < K: G_k: [noise plane, class plane, l] -> 7x7 conv, ReLU, 7x7 conv, ReLU, 5x5 conv (all
  "same") -> the residual, linear; D_k: [h + l, class plane] -> 5x5 conv, ReLU, 5x5 stride-2 conv,
  ReLU, dropout -> a linear score (both convs "valid", as theirs).
Noise, as theirs: uniform in [-1, 1], for the noise planes and for the top level's latent. The lab's
latents are standard normal (sample z=, interpolate); the top G turns its z into the uniform one
exactly, u = erf(z / sqrt 2) = 2 Phi(z) - 1, so that both hold.
Class-conditional (model.conditional=true), as theirs: the one-hot label joined to u and to the top D's
input; at the conv levels a linear map of the one-hot to one H x W plane (ReLU), stacked on the inputs
of G_k and D_k ("passed through a linear layer whose output is reshaped into a single plane feature
map", section 4.2).
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


def noise_planes(like: Tensor) -> Tensor:
    """One noise plane per image of `like`'s size, uniform in [-1, 1] (theirs: noise_inputs:uniform(-1, 1));
    under torchrun this rank's rows of the global batch's (ganlab.distributed.rows)."""
    u = distributed.rows(torch.rand, like.shape[0], 1, *like.shape[2:], device=like.device)
    return u.mul_(2).sub_(1).to(like.dtype)


class ClassPlane(nn.Module):
    """The one-hot label through a linear layer and a ReLU, reshaped into one H x W feature map."""

    def __init__(self, num_classes: int, size: int):
        super().__init__()
        self.num_classes, self.size = num_classes, size
        self.linear = nn.Linear(num_classes, size * size)

    def forward(self, y: Tensor, like: Tensor) -> Tensor:
        onehot = F.one_hot(y, self.num_classes).to(like.dtype)
        return F.relu(self.linear(onehot)).view(-1, 1, self.size, self.size)


class CoarseGenerator(nn.Module):
    """Level K: [u (, one-hot)] -> 2 hidden ReLU layers -> a linear image of the top size."""

    def __init__(self, z_dim: int, channels: int, size: int, hidden: int, num_classes: int | None):
        super().__init__()
        self.z_dim, self.shape, self.num_classes = z_dim, (channels, size, size), num_classes
        self.net = nn.Sequential(nn.Linear(z_dim + (num_classes or 0), hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, channels * size * size))

    def forward(self, z: Tensor, l: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        u = torch.erf(z * 0.5 ** 0.5)  # N(0, 1) -> U(-1, 1) exactly
        if self.num_classes:
            u = torch.cat([u, F.one_hot(y, self.num_classes).to(u.dtype)], dim=1)
        return self.net(u).view(-1, *self.shape)


class CoarseDiscriminator(nn.Module):
    """Level K: [I flattened (, one-hot)] -> (linear, ReLU, dropout) x 2 -> a linear score."""

    def __init__(self, channels: int, size: int, hidden: int, num_classes: int | None, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Linear(channels * size * size + (num_classes or 0), hidden), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, x: Tensor, l: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        h = x.flatten(1)
        if self.num_classes:
            h = torch.cat([h, F.one_hot(y, self.num_classes).to(h.dtype)], dim=1)
        return self.net(h).view(-1)


class ResidualGenerator(nn.Module):
    """Level k < K: [noise plane (, class plane), l] -> 7x7, 7x7, 5x5 convs -> the residual h~_k (linear)."""

    def __init__(self, channels: int, size: int, width: int, num_classes: int | None):
        super().__init__()
        self.num_classes = num_classes
        self.label = ClassPlane(num_classes, size) if num_classes else None
        self.net = nn.Sequential(nn.Conv2d(1 + (1 if num_classes else 0) + channels, width, 7, padding=3), nn.ReLU(),
                                 nn.Conv2d(width, width, 7, padding=3), nn.ReLU(),
                                 nn.Conv2d(width, channels, 5, padding=2))

    def forward(self, noise: Tensor, l: Tensor, y: Tensor | None = None) -> Tensor:
        planes = [noise.to(l.dtype)] + ([self.label(y, l)] if self.label is not None else []) + [l]
        return self.net(torch.cat(planes, dim=1))


class PairDiscriminator(nn.Module):
    """Level k < K: a score for h + l (, class plane): 5x5 conv, ReLU, 5x5 stride-2 conv, ReLU, dropout, linear."""

    def __init__(self, channels: int, size: int, width: int, num_classes: int | None, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.label = ClassPlane(num_classes, size) if num_classes else None
        out = (size - 4 - 5) // 2 + 1
        self.net = nn.Sequential(nn.Conv2d(channels + (1 if num_classes else 0), width, 5), nn.ReLU(),
                                 nn.Conv2d(width, width, 5, 2), nn.ReLU(), nn.Flatten(), nn.Dropout(dropout),
                                 nn.Linear(width * out * out, 1))

    def forward(self, h: Tensor, l: Tensor, y: Tensor | None = None) -> Tensor:
        x = h + l.to(h.dtype)
        planes = [x] + ([self.label(y, x)] if self.label is not None else [])
        return self.net(torch.cat(planes, dim=1)).view(-1)


MIN_CONV_SIZE = 9  # D_k's 5x5 and 5x5 stride-2 "valid" convolutions need at least 9 px


def build(model_cfg, shape: tuple[int, ...], num_classes: int | None) -> tuple[list[nn.Module], list[nn.Module]]:
    """([G_0, ..., G_K], [D_0, ..., D_K]) for data of `shape` (C, H, W), finest level first."""
    levels, widths = model_cfg.levels, list(model_cfg.widths)
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise GanlabError(f"model.levels={levels!r} is not valid: give a number of pyramid levels >= 1 (the paper: 3 "
                          "at 32 px, 4 at 64 px).")
    if len(widths) != levels or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise GanlabError(f"model.widths={widths} is not valid: give one positive width per level, finest first "
                          f"({levels} of them, e.g. [128,128,600]: conv channels, then the top level's D units).")
    dropout = model_cfg.d_dropout
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise GanlabError(f"model.d_dropout={dropout!r} is not valid: give a probability in [0, 1) (the paper: 0.5).")
    channels, size = int(shape[0]), int(shape[-1])
    if int(shape[-2]) != size:
        raise GanlabError(f"model={model_cfg.name} needs square images; the data are {shape[-2]}x{size}.")
    sizes = level_sizes(size, levels, model_cfg.name)
    top = levels - 1
    if top and sizes[top - 1] < MIN_CONV_SIZE:
        raise GanlabError(f"model={model_cfg.name} with model.levels={levels} at {size} px gives a {sizes[top - 1]} px "
                          f"conv level; its D needs at least {MIN_CONV_SIZE} px. Lower model.levels (the paper: 3 at "
                          "32 px, 4 at 64 px).")
    gens = [ResidualGenerator(channels, sizes[k], widths[k], num_classes) for k in range(top)]
    discs = [PairDiscriminator(channels, sizes[k], widths[k], num_classes, float(dropout)) for k in range(top)]
    gens.append(CoarseGenerator(int(model_cfg.z_dim), channels, sizes[top], 2 * widths[top], num_classes))
    discs.append(CoarseDiscriminator(channels, sizes[top], widths[top], num_classes, float(dropout)))
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
            h = self.gens[k](noise_planes(l), l, y)
            x = l + h
            if trace is not None:
                trace.append((k, l, h, x))
        return x.clamp(-1, 1)

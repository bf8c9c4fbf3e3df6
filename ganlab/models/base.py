"""What every architecture shares: G and D wrappers with optional class conditioning, the
minibatch standard deviation and minibatch discrimination layers, and spectral normalisation of D.

A backbone (mlp, dcgan, resnet) builds three pieces: G's network from an input vector,
D's feature extractor phi(x) -> N x F, and F. The wrappers add the label handling:
- G: a label embedding joined to z (Mirza & Osindero 2014).
- D `concat`: one-hot label maps as extra input channels (conv) or one-hot features joined to the
  flattened input (MLP); D `projection`: D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Generator(nn.Module):
    def __init__(self, net: nn.Module, z_dim: int, num_classes: int | None = None, embed_dim: int = 0):
        super().__init__()
        self.net, self.z_dim, self.num_classes = net, z_dim, num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None

    @property
    def conditional(self) -> bool:
        return self.embed is not None

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if y is None:
                raise ValueError("a conditional generator needs labels y")
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, features: nn.Module, feat_dim: int, num_classes: int | None = None,
                 cond: str = "concat", join: str = "flat"):
        super().__init__()
        self.features, self.head = features, nn.Linear(feat_dim, 1)
        self.num_classes, self.cond, self.join = num_classes, cond, join
        self.embed = nn.Embedding(num_classes, feat_dim) if num_classes and cond == "projection" else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, features: bool = False):
        """The score of each input; with `features`, (scores, the features its head reads: N x feat_dim)."""
        if self.num_classes and self.cond == "concat":
            onehot = F.one_hot(y, self.num_classes).to(x.dtype)
            if self.join == "channels":
                x = torch.cat([x, onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
            else:
                x = torch.cat([x.flatten(1), onehot], dim=1)
        h = self.features(x)
        out = self.head(h).view(-1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return (out, h) if features else out


class MinibatchStdDev(nn.Module):
    """Appends the mean standard deviation of each feature over groups of samples as one extra
    channel/feature (Karras et al. 2018, sec. 3), so D can see a lack of variety in a batch."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g = next(k for k in range(min(self.group_size, n), 0, -1) if n % k == 0)
        y = x.view(g, n // g, *x.shape[1:])  # group members are g apart, as in ProGAN
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (n/g, ...)
        std = std.flatten(1).mean(dim=1)  # one number per group
        std = std.repeat(g)  # back to n: sample i belongs to group i % (n/g)
        extra = std.view(n, 1, *([1] * (x.dim() - 2))).expand(n, 1, *x.shape[2:])
        return torch.cat([x, extra], dim=1)


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016, sec. 3.2; the authors' improved-gan nn.py MinibatchLayer):
    each sample's features f (N x A) are projected to B kernels of C numbers, M = f W (N x B x C); for every
    kernel, o_b(x_i) = sum over j != i of exp(-||M_ib - M_jb||_1) + bias_b, and the B numbers o(x_i) are joined
    to f. A batch whose samples sit too close together (a G over-making some modes) gives large o, which D
    can learn to score as fake; D must see real and fake batches apart (ganlab's D always does).

    As in the authors' code: W = theta x exp(log_scale) / ||theta|| (weight norm over the inputs), theta from
    N(0, 0.05), bias -1, and a data-based init on D's first batch in training mode: each kernel's scale is set
    so that the mean distance of a sample to its nearest neighbour in the batch is 2 (under torchrun: averaged
    over the ranks, so every rank keeps the same weights). A checkpoint carries the scale and `initialized`."""

    def __init__(self, in_features: int, kernels: int, dim: int = 5):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(in_features, kernels, dim) * 0.05)
        self.log_scale = nn.Parameter(torch.zeros(kernels, dim))
        self.bias = nn.Parameter(torch.full((kernels,), -1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # a host-side copy of `initialized`: one look at the buffer, not one per step

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x N L1 distances between the samples' projections, kernel by kernel."""
        w = self.theta * (self.log_scale.exp() / self.theta.pow(2).sum(0).sqrt())
        m = torch.einsum("na,abc->bnc", x.flatten(1), w).float()  # distances in fp32, also under autocast
        return torch.cdist(m, m, p=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._ready:
            self._data_init(x)
        dist = self.distances(x)
        n = x.shape[0]
        others = ~torch.eye(n, dtype=torch.bool, device=x.device)
        o = (torch.exp(-dist) * others).sum(dim=2).t() + self.bias  # N x B, each sample against the others
        return torch.cat([x.flatten(1), o.to(x.dtype)], dim=1)

    @torch.no_grad()
    def _data_init(self, x: torch.Tensor) -> None:
        from ganlab import distributed

        if not bool(self.initialized) and x.shape[0] > 1:
            dist = self.distances(x.float())
            dist = dist + torch.eye(x.shape[0], device=x.device) * torch.finfo(dist.dtype).max
            half_min = 0.5 * dist.amin(dim=2).mean(dim=1)  # per kernel
            half_min = distributed.all_reduce(half_min) / distributed.world()
            self.log_scale.sub_(half_min.clamp_min(1e-12).log()[:, None])
            self.initialized.fill_(True)
        self._ready = bool(self.initialized)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # look at the loaded buffer again on the next training step


def pack_samples(x: torch.Tensor, m: int, join: str) -> torch.Tensor:
    """PacGAN's packing (Lin et al. 2018): N samples -> N/m packs of m consecutive samples, joined on the
    channel axis (conv D: N x C x H x W -> N/m x mC x H x W) or on the flattened features (MLP D). D then
    scores one pack at a time, so it can see a batch's lack of variety; m = 1 returns x as it is."""
    if m == 1:
        return x
    if x.shape[0] % m:
        raise ValueError(f"{x.shape[0]} samples do not split into packs of {m}")
    if join == "channels":
        return x.reshape(x.shape[0] // m, m * x.shape[1], *x.shape[2:])
    return x.reshape(x.shape[0] // m, -1)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) on every conv, linear and embedding layer."""
    from torch.nn.utils.parametrizations import spectral_norm

    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.Linear, nn.Embedding)):
            setattr(module, name, spectral_norm(child))
        else:
            apply_spectral_norm(child)
    return module


def pow2_padding(size: int, target: int | None = None) -> tuple[int, tuple[int, int]]:
    """(target, (pad before, pad after)) taking images of `size` to `target` (default: the next power of
    two >= max(size, 8); 28 -> 32 with 2 + 2), for the networks that halve their maps down to 4x4 or 1x1."""
    target = 2 ** math.ceil(math.log2(max(size, 8))) if target is None else target
    extra = target - size
    return target, (extra // 2, extra - extra // 2)


def pad_border(x: torch.Tensor, pad: tuple[int, int], mode: str = "replicate") -> torch.Tensor:
    """x padded by `pad` (before, after) on both spatial axes: edge pixels replicated, or 0 (mode="zeros")."""
    a, b = pad
    if not (a or b):
        return x
    return F.pad(x, (a, b, a, b), mode="replicate") if mode == "replicate" else F.pad(x, (a, b, a, b), value=0.0)


def crop(x: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """The inverse of pad_border: `pad` (before, after) removed from both spatial axes."""
    a, b = pad
    return x if not (a or b) else x[..., a:x.shape[-2] - b, a:x.shape[-1] - b]

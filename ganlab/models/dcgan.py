"""DCGAN-style convolutional G and D (Radford et al. 2016) for 28, 32 and 64 px images.

G: z -> (transposed conv) base x base -> doubled per layer -> image, BatchNorm + ReLU inside,
tanh out. D mirrors it with strided 4x4 convs and LeakyReLU(0.2), no norm on the first layer; its
features are the flattened base x base maps, and the final linear layer on them is the paper's
last base x base convolution. base is 7 for 28 px, 4 for 32 and 64 px.
"""

from __future__ import annotations

from torch import nn

from ganlab.errors import GanlabError
from ganlab.models.base import MinibatchStdDev
from ganlab.models.mlp import activation

SUPPORTS = ("image",)
JOIN = "channels"
_BASES = {28: (7, 2), 32: (4, 3), 64: (4, 4)}  # resolution -> (base size, number of doublings)


def plan(resolution: int, backbone: str = "dcgan") -> tuple[int, int]:
    if resolution not in _BASES:
        raise GanlabError(
            f"the {backbone} backbone is built for 28, 32 or 64 px images, not {resolution}; "
            "set dataset.resolution=28, 32 or 64."
        )
    return _BASES[resolution]


def norm2d(kind: str, channels: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    if kind == "layer":  # layer norm over (C, H, W): fine with a gradient penalty
        return [nn.GroupNorm(1, channels)]
    return []


def d_width(cfg) -> int:
    """D's width: model.d_width, or model.width when that is null (or absent, in an older run's config)."""
    return cfg.get("d_width") or cfg.width


class DCGANGenerator(nn.Module):
    def __init__(self, in_dim, channels, resolution, width, norm, act, slope):
        super().__init__()
        base, n_up = plan(resolution)
        ch = width * 2 ** (n_up - 1)
        use_bn = norm == "batch"
        layers = [nn.ConvTranspose2d(in_dim, ch, base, 1, 0, bias=not use_bn)]
        layers += norm2d(norm, ch) + [activation(act, slope)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=not use_bn)]
            layers += norm2d(norm, ch // 2) + [activation(act, slope)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z.view(z.shape[0], -1, 1, 1))


def dcgan_features(in_channels, resolution, width, norm, slope, mbstd_group=0) -> tuple[nn.Module, int]:
    base, n_down = plan(resolution)
    ch = width
    layers = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(slope)]
    for _ in range(n_down - 1):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm != "batch")]
        layers += norm2d(norm, ch * 2) + [nn.LeakyReLU(slope)]
        ch *= 2
    if mbstd_group:
        layers.append(MinibatchStdDev(mbstd_group))
        ch += 1
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), ch * base * base


def build(cfg, shape: tuple[int, ...], kind: str, g_in: int, d_extra: int):
    channels, height, width = shape
    if height != width:
        raise GanlabError(f"the dcgan backbone needs square images, got {height}x{width}.")
    g = DCGANGenerator(g_in, channels, height, cfg.width, cfg.g_norm, cfg.g_act, cfg.leaky_slope)
    features, feat_dim = dcgan_features(channels + d_extra, height, d_width(cfg), cfg.d_norm, cfg.leaky_slope,
                                        cfg.minibatch_stddev)
    return g, features, feat_dim

"""ResNet G and D of the SNGAN / WGAN-GP CIFAR experiments (Miyato et al. 2018, appendix B.4;
Gulrajani et al. 2017, appendix F), sized for 28, 32 and 64 px.

G: linear -> base x base x (4*width) -> one up-block per doubling -> BN, ReLU, 3x3 conv, tanh.
D: an 'optimized' first down-block, more down-blocks to the base size, two plain blocks, ReLU and
a global sum pool; the linear head sits in the Discriminator wrapper.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ganlab.models.base import MinibatchStdDev
from ganlab.models.dcgan import d_width, norm2d, plan

SUPPORTS = ("image",)
JOIN = "channels"


class GBlock(nn.Module):
    def __init__(self, cin, cout, norm):
        super().__init__()
        self.n1, self.n2 = nn.Sequential(*norm2d(norm, cin)), nn.Sequential(*norm2d(norm, cout))
        self.c1, self.c2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.sc = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = F.interpolate(F.relu(self.n1(x)), scale_factor=2)
        h = self.c2(F.relu(self.n2(self.c1(h))))
        return h + self.sc(F.interpolate(x, scale_factor=2))


class DBlock(nn.Module):
    def __init__(self, cin, cout, down, norm, first=False):
        super().__init__()
        self.down, self.first = down, first
        self.c1, self.c2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.n1, self.n2 = nn.Sequential(*norm2d(norm, cin)), nn.Sequential(*norm2d(norm, cout))
        self.sc = nn.Conv2d(cin, cout, 1) if (cin != cout or down) else None

    def forward(self, x):
        h = x if self.first else F.relu(self.n1(x))
        h = self.c2(F.relu(self.n2(self.c1(h))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:  # the optimized block pools before its 1x1 shortcut
            s = self.sc(F.avg_pool2d(s, 2))
        else:
            s = self.sc(s) if self.sc is not None else s
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


class ResNetGenerator(nn.Module):
    def __init__(self, in_dim, channels, resolution, width, norm):
        super().__init__()
        self.base, n_up = plan(resolution, "resnet")
        self.ch = 4 * width
        self.fc = nn.Linear(in_dim, self.base * self.base * self.ch)
        self.blocks = nn.Sequential(*[GBlock(self.ch, self.ch, norm) for _ in range(n_up)])
        self.out = nn.Sequential(*norm2d(norm, self.ch), nn.ReLU(), nn.Conv2d(self.ch, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z):
        return self.out(self.blocks(self.fc(z).view(-1, self.ch, self.base, self.base)))


class _SumPool(nn.Module):
    def forward(self, x):
        return F.relu(x).sum(dim=(2, 3))


def resnet_features(in_channels, resolution, width, norm, mbstd_group=0) -> tuple[nn.Module, int]:
    _, n_down = plan(resolution, "resnet")
    ch = 2 * width
    blocks = [DBlock(in_channels, ch, True, norm, first=True)]
    blocks += [DBlock(ch, ch, True, norm) for _ in range(n_down - 2)]
    blocks += [DBlock(ch, ch, False, norm), DBlock(ch, ch, False, norm)]
    if mbstd_group:
        blocks.append(MinibatchStdDev(mbstd_group))
        ch += 1
    return nn.Sequential(*blocks, _SumPool()), ch


def build(cfg, shape: tuple[int, ...], kind: str, g_in: int, d_extra: int):
    channels, height, _ = shape
    g = ResNetGenerator(g_in, channels, height, cfg.width, cfg.g_norm)
    features, feat_dim = resnet_features(channels + d_extra, height, d_width(cfg), cfg.d_norm, cfg.minibatch_stddev)
    return g, features, feat_dim

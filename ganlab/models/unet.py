"""pix2pix's U-Net generator (Isola et al. 2017; the authors' PyTorch code's `unet_128` / `unet_256`), flat.

`downs` levels, each halving the image (7: 128 px to 1x1, 8: 256 px to 1x1). Down path: a conv4x4 stride 2
(level 0: in_channels to w; level k: to w * min(2^k, 8)), every level but the first starting with LeakyReLU 0.2,
every level but the first and the innermost ending with the norm. Up path, innermost first: ReLU, a transposed
conv4x4 stride 2 and the norm; each up level's input is its own down level's output concatenated with the level
below's up output (skip first, as the authors' blocks do), and the outermost ends in a transposed conv to the
image and tanh. Dropout 0.5 after the up levels of the `downs - 5` blocks just outside the innermost (the
8w-to-8w ones), when `dropout`. With batch norm the convs have no bias, with instance norm they have one (the
authors' rule); instance norm without affine parameters or running statistics.

The authors nest the levels (`UnetSkipConnectionBlock` inside one another); `ganlab.importers.cyclegan` maps
their keys onto this flat layout, `down.<k>` and `up.<downs - 1 - k>` for level k.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NORMS = ("batch", "instance")


def norm_layer(norm: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.InstanceNorm2d(channels)


class UnetGenerator(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, downs: int, width: int, norm: str = "batch",
                 dropout: bool = True):
        super().__init__()
        if downs < 5:
            raise ValueError(f"a U-Net of the authors' layout has at least 5 levels, not {downs}")
        bias = norm == "instance"
        inner = [width * min(2 ** k, 8) for k in range(downs)]  # each level's inner (down conv's out) channels
        outer = [out_channels] + inner[:-1]  # what each level's up conv gives back
        self.down = nn.ModuleList()
        for k in range(downs):
            cin = in_channels if k == 0 else outer[k]
            conv = nn.Conv2d(cin, inner[k], 4, 2, 1, bias=bias)
            if k == 0:
                self.down.append(nn.Sequential(conv))
            elif k == downs - 1:
                self.down.append(nn.Sequential(nn.LeakyReLU(0.2, True), conv))
            else:
                self.down.append(nn.Sequential(nn.LeakyReLU(0.2, True), conv, norm_layer(norm, inner[k])))
        self.up = nn.ModuleList()
        for k in range(downs - 1, -1, -1):
            cin = inner[k] if k == downs - 1 else 2 * inner[k]
            if k == 0:
                self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(cin, out_channels, 4, 2, 1), nn.Tanh()))
                continue
            layers = [nn.ReLU(True), nn.ConvTranspose2d(cin, outer[k], 4, 2, 1, bias=bias), norm_layer(norm, outer[k])]
            if dropout and 4 <= k <= downs - 2:
                layers.append(nn.Dropout(0.5))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        inputs = []  # each level's input: the skip its up level concatenates
        for layer in self.down:
            inputs.append(x)
            x = layer(x)
        for j, layer in enumerate(self.up):
            x = layer(x)
            k = len(self.down) - 1 - j
            if k > 0:
                x = torch.cat([inputs[k], x], 1)
        return x

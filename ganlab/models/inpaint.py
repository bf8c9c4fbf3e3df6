"""Inpainting networks: G(masked image, mask) -> the whole image; the objective composites it with
the known pixels. Images are padded (edge pixels replicated, the hole mask with 0) to the next
power of two >= 8 (28 -> 32) and cropped back, so every dataset size works.

- `EncoderDecoder` (Pathak et al. 2016, the context encoder; the layout of the authors' adversarial
  `train.lua`): strided conv4x4 down to 4x4 (LeakyReLU 0.2, BatchNorm after the first), a
  bottleneck, then fractionally strided conv4x4 up (BatchNorm, ReLU), tanh. Bottleneck
  `model.bottleneck`: `conv` (a 4x4 conv to a 1 x 1 x model.bottleneck_dim code and back, their
  nBottleneck = 4000 at 128 px) or `channel_fc` (the paper's channel-wise fully connected layer:
  each channel's 4x4 map through its own 16 x 16 linear map, dropout 0.5, then a 1x1 conv across
  channels).
- `UNet` (Isola et al. 2017, pix2pix's G): conv4x4 stride 2 down to 1x1 (LeakyReLU 0.2, BatchNorm
  but on the first and innermost), up with fractionally strided conv4x4 (ReLU, BatchNorm, dropout
  0.5 in the three up layers after the innermost as the noise), skip connections concatenating each down
  layer's output to the mirrored up layer's input.
- `GlobalDiscriminator` (the context encoder's D, DCGAN style): strided conv4x4 to 4x4, a 4x4 conv to
  one logit per image.
- `PatchDiscriminator` (pix2pix's 70x70 PatchGAN, BatchNorm) on the pair (masked image and mask,
  image): one logit per patch.
Widths double per level from model.width up to 8 x model.width. Weights N(0, 0.02), BatchNorm
scales N(1, 0.02), as in both papers' code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.models import init_weights
from ganlab.models.base import crop, pad_border, pow2_padding
from ganlab.models.cyclegan import PatchDiscriminator

BOTTLENECKS = ("conv", "channel_fc")


def _width(width: int, level: int) -> int:
    return width * min(2 ** level, 8)


class ChannelwiseFC(nn.Module):
    """Pathak et al.'s channel-wise fully connected layer: every channel's h x w map through its own
    (hw x hw) linear map (no mixing across channels), then dropout and a 1x1 conv that mixes them."""

    def __init__(self, channels: int, hw: int, dropout: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, hw, hw) * 0.02)
        self.bias = nn.Parameter(torch.zeros(channels, hw))
        self.mix = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        y = torch.einsum("ncp,cpq->ncq", x.flatten(2), self.weight) + self.bias
        return self.mix(y.view(n, c, h, w))


class InpaintGenerator(nn.Module):
    """Pads (image, mask) to the network's size, runs it, crops back: `forward(masked, mask)` -> image."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.pad = net, pow2_padding(size)[1]

    def forward(self, masked: Tensor, mask: Tensor) -> Tensor:
        x = torch.cat([pad_border(masked, self.pad), pad_border(mask, self.pad, "zeros")], 1)
        return crop(self.net(x), self.pad)


def _down_to_4x4(cin: int, padded: int, width: int) -> tuple[list[nn.Module], int]:
    """DCGAN's strided conv4x4 stack from `padded` px down to 4x4 (LeakyReLU 0.2, BatchNorm after the first):
    the context encoder's encoder and its D. Returns (layers, channels out)."""
    levels = int(math.log2(padded // 4))
    layers = [nn.Conv2d(cin, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    for i in range(1, levels):
        layers += [nn.Conv2d(_width(width, i - 1), _width(width, i), 4, 2, 1, bias=False),
                   nn.BatchNorm2d(_width(width, i)), nn.LeakyReLU(0.2, True)]
    return layers, _width(width, levels - 1)


class EncoderDecoder(nn.Module):
    def __init__(self, channels: int, padded: int, width: int, bottleneck: str, bottleneck_dim: int):
        super().__init__()
        levels = int(math.log2(padded // 4))
        down, top = _down_to_4x4(channels + 1, padded, width)
        if bottleneck == "channel_fc":
            mid = [ChannelwiseFC(top, 16), nn.BatchNorm2d(top), nn.ReLU(True)]
        else:
            mid = [nn.Conv2d(top, bottleneck_dim, 4, bias=False), nn.BatchNorm2d(bottleneck_dim), nn.LeakyReLU(0.2, True),
                   nn.ConvTranspose2d(bottleneck_dim, top, 4, bias=False), nn.BatchNorm2d(top), nn.ReLU(True)]
        up = []
        for i in range(levels - 1, 0, -1):
            up += [nn.ConvTranspose2d(_width(width, i), _width(width, i - 1), 4, 2, 1, bias=False),
                   nn.BatchNorm2d(_width(width, i - 1)), nn.ReLU(True)]
        up += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*down, *mid, *up)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class UNet(nn.Module):
    def __init__(self, channels: int, padded: int, width: int, dropout: float = 0.5):
        super().__init__()
        levels = int(math.log2(padded))  # down to 1 x 1
        self.down = nn.ModuleList()
        cin = channels + 1
        for i in range(levels):
            cout = _width(width, i)
            norm = [nn.BatchNorm2d(cout)] if 0 < i < levels - 1 else []
            act = [] if i == 0 else [nn.LeakyReLU(0.2, True)]  # each down layer but the first starts with its activation
            self.down.append(nn.Sequential(*act, nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm), *norm))
            cin = cout
        self.up = nn.ModuleList()
        for i in range(levels - 1, -1, -1):
            skip_in = _width(width, i) if i == levels - 1 else 2 * _width(width, i)  # concat of up and mirrored down
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(skip_in, channels, 4, 2, 1), nn.Tanh()))
                continue
            cout = _width(width, i - 1)
            drop = [nn.Dropout(dropout)] if 1 <= levels - 1 - i <= 3 else []  # the three after the innermost
            self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(skip_in, cout, 4, 2, 1, bias=False),
                                         nn.BatchNorm2d(cout), *drop))

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()  # the innermost feeds the first up layer directly
        for layer in self.up:
            x = layer(x)
            if skips:
                x = torch.cat([x, skips.pop()], 1)
        return x


class GlobalDiscriminator(nn.Module):
    def __init__(self, channels: int, size: int, width: int):
        super().__init__()
        padded, self.pad = pow2_padding(size)
        layers, top = _down_to_4x4(channels, padded, width)
        self.net = nn.Sequential(*layers, nn.Conv2d(top, 1, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(pad_border(x, self.pad)).flatten(1)


class PairDiscriminator(nn.Module):
    """pix2pix's conditional D: a PatchGAN on the concatenation (masked image, mask, image)."""

    def __init__(self, channels: int, size: int, width: int, layers: int):
        super().__init__()
        self.pad = pow2_padding(size)[1]
        self.net = PatchDiscriminator(2 * channels + 1, width, layers, norm=nn.BatchNorm2d, bias=False)  # no bias before BN, as the authors' NLayerDiscriminator

    def forward(self, x: Tensor, masked: Tensor, mask: Tensor) -> Tensor:
        pair = torch.cat([pad_border(masked, self.pad), pad_border(mask, self.pad, "zeros"), pad_border(x, self.pad)], 1)
        return self.net(pair)


def build(model_cfg, shape: tuple[int, ...], recipe: dict) -> tuple[InpaintGenerator, nn.Module | None]:
    """(G, D or None when there is no adversarial term) for images of `shape` (C, H, W)."""
    c, h, w = (int(s) for s in shape)
    if h != w:
        raise GanlabError(f"model={model_cfg.name} needs square images, got {h}x{w}; set dataset.resolution.")
    width = model_cfg.width
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise GanlabError(f"model.width={width!r} is not valid: give an integer >= 1 (the papers: 64).")
    padded = pow2_padding(h)[0]
    if recipe["generator"] == "unet":
        net = UNet(c, padded, width)
    else:
        bottleneck, dim = model_cfg.bottleneck, model_cfg.bottleneck_dim
        if bottleneck not in BOTTLENECKS:
            raise GanlabError(f"model.bottleneck={bottleneck!r} is not valid: use {' or '.join(BOTTLENECKS)}.")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise GanlabError(f"model.bottleneck_dim={dim!r} is not valid: give an integer >= 1 (Pathak et al.: 4000).")
        net = EncoderDecoder(c, padded, width, bottleneck, dim)
    g = InpaintGenerator(net, h)
    d = None
    if recipe["lambda_adv"] > 0:
        if recipe["discriminator"] == "patch":
            layers = int(model_cfg.d_layers)
            if padded < 2 ** (layers + 2):
                raise GanlabError(f"model.d_layers={layers} needs images of at least {2 ** (layers + 2)} px (padded); "
                                  f"these are {h} px: lower model.d_layers.")
            d = PairDiscriminator(c, h, width, layers)
        else:
            d = GlobalDiscriminator(c, h, width)
    for net_ in (g, d):
        if net_ is not None:
            init_weights(net_, 0.02)
    return g, d

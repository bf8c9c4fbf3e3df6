"""Progressive growing (Karras et al. 2018, "Progressive Growing of GANs", Table 2 scaled by config).

Both networks hold every resolution's block from the start; a forward pass runs up to the
resolution it is asked for, fading the newest block in with alpha (0: only the previous resolution
speaks, 1: only the new block). Blocks above that resolution get no gradient, so Adam leaves them
untouched until they grow in (the official implementation does the same with its `lod` input).

- G: z -> pixel norm -> dense to 4x4 -> conv3x3; per resolution: nearest upsample, 2 x conv3x3; each
  conv followed by LeakyReLU 0.2 and pixel norm; a 1x1 toRGB per resolution, linear output. Fading:
  lerp(upsample(toRGB_{r/2}(h_{r/2})), toRGB_r(h_r), alpha).
- D: a 1x1 fromRGB per resolution; per resolution: 2 x conv3x3, 2x2 average pooling; at 4x4 the
  minibatch standard deviation, conv3x3, dense, dense to one score. Fading:
  lerp(fromRGB_{r/2}(avgpool(x)), block_r(fromRGB_r(x)), alpha).
- Every layer has an equalized learning rate; no BatchNorm anywhere.
Channels at resolution r: min(model.width, model.fmap_base / r) (the paper: 512 and 16384).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.models.base import MinibatchStdDev, crop, pow2_padding  # noqa: F401 (crop: pro.crop for the objectives)
from ganlab.models.layers import EqualizedConv2d, EqualizedLinear, lrelu, pixel_norm

SUPPORTS = ("image",)
MAX_RESOLUTION = 1024


def resolutions(resolution: int) -> list[int]:
    """4, 8, ..., resolution."""
    return [4 * 2**k for k in range(int(math.log2(resolution)) - 1)]


def geometry(model_cfg, shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
    """(the resolution G grows to, (pad before, pad after)) for data of `shape` (C, H, W).

    model.resolution: auto takes the data's size, or the next power of two when the size is not one:
    the real images are then padded at the border (replicated edge pixels; 28 -> 32 as LeNet-5 padded
    MNIST) and every sample is cropped back to the data's size, so metrics compare like with like."""
    size = int(shape[-1])
    if int(shape[-2]) != size:
        raise GanlabError(f"model={model_cfg.name} needs square images; the data are {shape[-2]}x{size}.")
    wanted = model_cfg.get("resolution", "auto")
    target = pow2_padding(size)[0] if wanted in ("auto", None) else wanted
    if not isinstance(target, int) or isinstance(target, bool) or target < 8 or target > MAX_RESOLUTION \
            or target & (target - 1):
        raise GanlabError(f"model.resolution={wanted!r} is not valid: use auto or a power of two from 8 to "
                          f"{MAX_RESOLUTION} (G grows from 4x4 by doubling).")
    if target < size:
        raise GanlabError(f"model.resolution={target} is smaller than the data ({size}x{size}); add "
                          f"dataset.resolution={target} to train at {target}x{target}.")
    return pow2_padding(size, target)


def channels(model_cfg, resolution: int) -> dict[int, int]:
    return {r: max(1, min(int(model_cfg.width), int(model_cfg.fmap_base) // r)) for r in resolutions(resolution)}


def _fading(alpha) -> bool:
    """A tensor alpha (the objective passes one only while fading) or a float below 1."""
    return isinstance(alpha, Tensor) or alpha < 1.0


class _GBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0, self.conv1 = EqualizedConv2d(cin, cout, 3), EqualizedConv2d(cout, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = pixel_norm(lrelu(self.conv0(x)))
        return pixel_norm(lrelu(self.conv1(x)))


class ProGenerator(nn.Module):
    conditional, num_classes = False, None

    def __init__(self, z_dim: int, chans: dict[int, int], out_channels: int, resolution: int):
        super().__init__()
        self.z_dim, self.resolution, self.c4 = z_dim, resolution, chans[4]
        self.dense = EqualizedLinear(z_dim, chans[4] * 16, gain=math.sqrt(2) / 4)  # the paper's 4x4 "conv"
        self.conv = EqualizedConv2d(chans[4], chans[4], 3)
        res = resolutions(resolution)
        self.blocks = nn.ModuleDict({str(r): _GBlock(chans[r // 2], chans[r]) for r in res[1:]})
        self.to_rgb = nn.ModuleDict({str(r): EqualizedConv2d(chans[r], out_channels, 1, gain=1.0) for r in res})

    def forward(self, z: Tensor, y: Tensor | None = None, res: int | None = None, alpha: float | Tensor = 1.0) -> Tensor:
        """Images at `res` x `res` (default: fully grown), the newest block faded in by alpha."""
        res = res or self.resolution
        h = pixel_norm(lrelu(self.dense(pixel_norm(z)).view(-1, self.c4, 4, 4)))
        h = prev = pixel_norm(lrelu(self.conv(h)))
        r = 4
        while r < res:
            r *= 2
            prev, h = h, self.blocks[str(r)](h)
        out = self.to_rgb[str(res)](h)
        if res > 4 and _fading(alpha):
            skip = F.interpolate(self.to_rgb[str(res // 2)](prev), scale_factor=2, mode="nearest")
            out = torch.lerp(skip, out, alpha)  # exact at both ends: alpha 0 -> skip, 1 -> out
        return out


class _DBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0, self.conv1 = EqualizedConv2d(cin, cin, 3), EqualizedConv2d(cin, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)


class ProDiscriminator(nn.Module):
    def __init__(self, chans: dict[int, int], in_channels: int, resolution: int, mbstd_group: int = 4):
        super().__init__()
        res = resolutions(resolution)
        self.from_rgb = nn.ModuleDict({str(r): EqualizedConv2d(in_channels, chans[r], 1) for r in res})
        self.blocks = nn.ModuleDict({str(r): _DBlock(chans[r], chans[r // 2]) for r in res[1:]})
        self.mbstd = MinibatchStdDev(mbstd_group) if mbstd_group else None
        c4 = chans[4]
        self.conv = EqualizedConv2d(c4 + (1 if mbstd_group else 0), c4, 3)
        self.dense = EqualizedLinear(c4 * 16, c4)
        self.out = EqualizedLinear(c4, 1, gain=1.0)

    def forward(self, x: Tensor, y: Tensor | None = None, alpha: float | Tensor = 1.0) -> Tensor:
        """One score per image of size x.shape[-1] (a grown resolution), the newest block faded in by alpha."""
        res = x.shape[-1]
        h = lrelu(self.from_rgb[str(res)](x))
        if res > 4:
            h = self.blocks[str(res)](h)
            if _fading(alpha):
                skip = lrelu(self.from_rgb[str(res // 2)](F.avg_pool2d(x, 2)))
                h = torch.lerp(skip, h, alpha)
            r = res // 2
            while r > 4:
                h, r = self.blocks[str(r)](h), r // 2
        if self.mbstd is not None:
            h = self.mbstd(h)
        h = lrelu(self.dense(lrelu(self.conv(h)).flatten(1)))
        return self.out(h).view(-1)


def build(model_cfg, shape: tuple[int, ...], resolution: int) -> tuple[ProGenerator, ProDiscriminator]:
    """G and D growing to `resolution` (from `geometry`) for data of `shape` (C, H, W)."""
    chans = channels(model_cfg, resolution)
    g = ProGenerator(int(model_cfg.z_dim), chans, int(shape[0]), resolution)
    d = ProDiscriminator(chans, int(shape[0]), resolution, int(model_cfg.minibatch_stddev))
    return g, d


def to_full_size(x: Tensor, resolution: int) -> Tensor:
    """A grid's images at `resolution` (nearest upsampling), so grids of every stage line up."""
    return x if x.shape[-1] == resolution else F.interpolate(x, scale_factor=resolution // x.shape[-1], mode="nearest")


class GrownSampler(nn.Module):
    """G at one point of its growth, called like every sampler of the lab: g(z, y) -> images of the
    data's size in [-1, 1] (the current resolution upsampled to the full one, the padding cropped).
    `ganlab sample`/`ganlab eval` and the metrics during training see what G makes at that point."""

    conditional, num_classes = False, None

    def __init__(self, g: ProGenerator, res: int, alpha: float, pad: tuple[int, int]):
        super().__init__()
        self.g, self.res, self.alpha, self.pad = g, res, alpha, pad
        self.z_dim = g.z_dim

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        x = to_full_size(self.g(z, res=self.res, alpha=self.alpha), self.g.resolution)
        return crop(x, self.pad).clamp(-1, 1)

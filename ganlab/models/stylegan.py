"""StyleGAN (Karras et al. 2019) with StyleGAN2's weight demodulation (Karras et al. 2020), pure PyTorch.

G = mapping network + synthesis network:
- mapping: z -> normalize (unit mean square) -> model.mapping_layers x (dense, LeakyReLU 0.2 x sqrt 2)
  -> w, every dense layer with an equalized learning rate scaled down by model.mapping_lr_mul (0.01).
  The average w is tracked (w_avg, beta model.w_avg_beta = 0.995) as a buffer, so it is in the
  checkpoint and the EMA copy; the truncation trick pulls w toward it: w_avg + psi (w - w_avg).
- synthesis: a learned constant 4x4 input; per resolution two 3x3 convolutions (the first after a
  bilinear x2 upsampling; the first resolution has one), each followed by per-pixel noise (a learned
  per-channel scale, zero at the start), a bias and LeakyReLU 0.2 (x sqrt 2), styled by its own w:
  `model.style=demod` (StyleGAN2): the conv weight modulated by the style s = A(w) per input channel
  and demodulated to unit L2 norm per output channel; `model.style=adain` (StyleGAN): a plain
  conv, then AdaIN: instance-normalized features scaled and shifted by the style (s, b) = A(w).
  Skip outputs (StyleGAN2): a modulated 1x1 toRGB per resolution (no demodulation), the running
  image upsampled and added. No BatchNorm anywhere.
  The layers read one w each: conv k reads ws[:, k], a resolution's toRGB the next conv's index, so
  G has num_ws = 2 log2(R) - 2 w inputs (18 at 1024 px, as in the paper); style mixing hands
  different layers different ws.
- D (StyleGAN2's residual D): fromRGB 1x1, per resolution a residual block (conv3x3, conv3x3, 2x2
  average pooling; the skip a 1x1 conv of the pooled input; summed x sqrt 1/2), then minibatch
  stddev (group model.minibatch_stddev), conv3x3, dense, dense to one score. Equalized lr everywhere.

Channels at resolution r: min(model.width, model.fmap_base / r), as for PG-GAN (the paper: 512, 16384).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab import distributed
from ganlab.errors import GanlabError
from ganlab.models.base import MinibatchStdDev
from ganlab.models.layers import SQRT2, EqualizedConv2d, EqualizedLinear, lrelu
from ganlab.models.progressive import channels, crop, resolutions

SUPPORTS = ("image",)
STYLES = ("demod", "adain")
NOISE_MODES = ("random", "const", "none")


def num_ws(resolution: int) -> int:
    """How many w inputs G reads: one per conv, plus the last toRGB's."""
    return 2 * int(math.log2(resolution)) - 2


def lrelu_gain(x: Tensor) -> Tensor:
    """LeakyReLU 0.2 times sqrt(2), StyleGAN2's activation (keeps the signal's scale)."""
    return F.leaky_relu(x, 0.2) * SQRT2


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def modulated_weight(weight: Tensor, styles: Tensor, demodulate: bool = True, eps: float = 1e-8) -> Tensor:
    """Each sample's conv weight (N x Cout x Cin x k x k): `weight` (Cout x Cin x k x k) scaled per input
    channel by the sample's style (N x Cin), then (demodulate) each output channel's filter divided by
    its L2 norm (StyleGAN2, eq. 1 and 3)."""
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    return w


def demodulation(weight: Tensor, styles: Tensor, eps: float = 1e-8) -> Tensor:
    """N x Cout: 1 / the L2 norm of each sample's modulated filter per output channel, from the
    per-channel sums of squares (sum_i s_i^2 sum_k w_oik^2), without forming the N x Cout x Cin x k x k
    weights."""
    return torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).t() + eps)


def adain(x: Tensor, scale: Tensor, bias: Tensor, eps: float = 1e-8) -> Tensor:
    """Adaptive instance normalization (Huang & Belongie 2017; StyleGAN eq. 1): each channel of each
    sample normalized to mean 0 and std 1 over its pixels, then scaled by `scale` and shifted by `bias`
    (N x C each): the output's per-channel mean is the bias and its std |scale|."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    x = x * torch.rsqrt(x.square().mean(dim=(2, 3), keepdim=True) + eps)
    return x * scale[:, :, None, None] + bias[:, :, None, None]


def mix_ws(ws1: Tensor, ws2: Tensor, cutoff: Tensor | int) -> Tensor:
    """Style mixing: layers < cutoff read ws1, layers >= cutoff ws2 (N x num_ws x w_dim each). `cutoff`
    may be a 0-d device tensor: nothing is read on the host."""
    layer = torch.arange(ws1.shape[1], device=ws1.device)[None, :, None]
    return torch.where(layer < cutoff, ws1, ws2)


def up2(x: Tensor) -> Tensor:
    """x2 bilinear upsampling: the [1, 3, 3, 1] / 4 filter of StyleGAN2's upsampler, edges replicated."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_mul: float, w_avg_beta: float, n_ws: int):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.fcs = nn.ModuleList(EqualizedLinear(a, b, gain=1.0, lr_mul=lr_mul) for a, b in zip(dims, dims[1:]))
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.w_avg_beta, self.n_ws = w_avg_beta, n_ws

    def forward(self, z: Tensor, psi: float = 1.0, cutoff: int | None = None, update_w_avg: bool = False) -> Tensor:
        """ws (N x num_ws x w_dim), the same w for every layer; psi < 1 truncates layers < cutoff (all)."""
        x = normalize_2nd_moment(z.float())
        for fc in self.fcs:
            x = lrelu_gain(fc(x))
        x = x.float()  # w in float32 under autocast too: the average and the truncation lerp stay exact
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x[:, None].expand(-1, self.n_ws, -1)
        if psi != 1:
            truncated = self.w_avg.lerp(ws, psi)
            ws = truncated if cutoff is None else mix_ws(truncated, ws, cutoff)
        return ws


class SynthesisLayer(nn.Module):
    """conv (modulated + demodulated, or plain then AdaIN) + noise + bias + LeakyReLU, styled by one w.

    The activation's sqrt(2) gain (StyleGAN2) is applied by the layer that reads the output, folded
    into its styles (`in_gain`): the same numbers with one pass over the activations fewer. Fused the
    same way: noise, bias and demodulation in two addcmul passes. Under AdaIN the gain is moot (instance
    norm removes any scale), so AdaIN layers have none."""

    convolutional = True  # for ganlab.optim.is_convolutional

    def __init__(self, cin: int, cout: int, w_dim: int, res: int, style: str, up: bool = False, in_gain: float = 1.0):
        super().__init__()
        self.style, self.up, self.res = style, up, res
        self.in_gain = in_gain if style == "demod" else 1.0
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.weight_gain = 1.0 / math.sqrt(cin * 9)
        self.bias = nn.Parameter(torch.zeros(cout))
        if style == "demod":  # one style per input channel, starting at 1
            self.affine = EqualizedLinear(w_dim, cin, gain=1.0, bias_init=1.0)
        else:  # a scale (starting at 1) and a shift (at 0) per output channel
            self.affine = EqualizedLinear(w_dim, 2 * cout, gain=1.0)
            with torch.no_grad():
                self.affine.bias[:cout].fill_(1.0)
        self.noise_strength = nn.Parameter(torch.zeros(cout))  # learned per channel, 0 at the start
        self.register_buffer("noise_const", torch.randn(1, 1, res, res))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        if self.up:
            x = up2(x)
        weight, s = self.weight * self.weight_gain, self.affine(w)
        extra = self.bias[None, :, None, None].to(x.dtype)
        if noise_mode != "none":
            noise = (distributed.rows(torch.randn, x.shape[0], 1, self.res, self.res, device=x.device, dtype=x.dtype)
                     if noise_mode == "random" else self.noise_const.to(x.dtype))
            extra = torch.addcmul(extra, noise, self.noise_strength[None, :, None, None].to(x.dtype))
        if self.style == "demod":
            out = F.conv2d(x * (s * self.in_gain)[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=1)
            return F.leaky_relu(torch.addcmul(extra, out, demodulation(weight, s)[:, :, None, None].to(x.dtype)), 0.2)
        out = F.leaky_relu(F.conv2d(x, weight.to(x.dtype), padding=1) + extra, 0.2)
        scale, shift = s.chunk(2, dim=1)
        return adain(out, scale.to(x.dtype), shift.to(x.dtype))


class ToRGB(nn.Module):
    """StyleGAN2's skip output: a modulated 1x1 conv (no demodulation) plus a bias, linear."""

    convolutional = True

    def __init__(self, cin: int, cout: int, w_dim: int, in_gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 1, 1))
        self.weight_gain = 1.0 / math.sqrt(cin) * in_gain
        self.bias = nn.Parameter(torch.zeros(cout))
        self.affine = EqualizedLinear(w_dim, cin, gain=1.0, bias_init=1.0)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        s = self.affine(w) * self.weight_gain
        return F.conv2d(x * s[:, :, None, None].to(x.dtype), self.weight.to(x.dtype), self.bias.to(x.dtype))


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, chans: dict[int, int], out_channels: int, resolution: int, style: str):
        super().__init__()
        res = resolutions(resolution)
        self.const = nn.Parameter(torch.randn(chans[4], 4, 4))
        gain = SQRT2 if style == "demod" else 1.0  # the previous layer's activation gain (the constant has none)
        layers = [SynthesisLayer(chans[4], chans[4], w_dim, 4, style)]
        rgbs = [ToRGB(chans[4], out_channels, w_dim, gain)]
        for r in res[1:]:
            layers += [SynthesisLayer(chans[r // 2], chans[r], w_dim, r, style, up=True, in_gain=gain),
                       SynthesisLayer(chans[r], chans[r], w_dim, r, style, in_gain=gain)]
            rgbs.append(ToRGB(chans[r], out_channels, w_dim, gain))
        self.layers, self.to_rgb = nn.ModuleList(layers), nn.ModuleList(rgbs)
        self.n_ws = len(layers) + 1

    def forward(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        """Images from ws (N x num_ws x w_dim): conv k reads ws[:, k]; the toRGB after conv k reads ws[:, k + 1]."""
        x = self.const[None].expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        img, k = None, 0
        for block, rgb in enumerate(self.to_rgb):
            for _ in range(1 if block == 0 else 2):
                x = self.layers[k](x, ws[:, k], noise_mode)
                k += 1
            y = rgb(x, ws[:, k])
            img = y if img is None else up2(img) + y
        return img


class StyleGenerator(nn.Module):
    conditional, num_classes = False, None

    def __init__(self, z_dim: int, w_dim: int, chans: dict[int, int], out_channels: int, resolution: int,
                 style: str = "demod", mapping_layers: int = 8, mapping_lr_mul: float = 0.01, w_avg_beta: float = 0.995):
        super().__init__()
        self.z_dim, self.w_dim, self.resolution = z_dim, w_dim, resolution
        self.synthesis = SynthesisNetwork(w_dim, chans, out_channels, resolution, style)
        self.n_ws = self.synthesis.n_ws
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_mul, w_avg_beta, self.n_ws)

    def forward(self, z: Tensor, y: Tensor | None = None, psi: float = 1.0, noise_mode: str = "random",
                mix_z: Tensor | None = None, mix_cutoff: Tensor | int | None = None, update_w_avg: bool = False) -> Tensor:
        """Images from z. Style mixing: layers >= mix_cutoff read the w of `mix_z` (a 0-d device tensor
        cutoff: no host read). `update_w_avg`: move the tracked average w toward this batch's (training)."""
        return self.synthesis(self.ws(z, psi, mix_z, mix_cutoff, update_w_avg), noise_mode)

    def ws(self, z: Tensor, psi: float = 1.0, mix_z: Tensor | None = None, mix_cutoff: Tensor | int | None = None,
           update_w_avg: bool = False) -> Tensor:
        ws = self.mapping(z, psi=psi, update_w_avg=update_w_avg)
        return ws if mix_z is None else mix_ws(ws, self.mapping(mix_z, psi=psi), mix_cutoff)


class _DBlock(nn.Module):
    """StyleGAN2's residual D block: (conv3x3, conv3x3, pool) + 1x1 conv of the pooled input, x sqrt(1/2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0, self.conv1 = EqualizedConv2d(cin, cin, 3), EqualizedConv2d(cin, cout, 3)
        self.skip = EqualizedConv2d(cin, cout, 1, gain=1.0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)
        return (skip + x) * math.sqrt(0.5)


class StyleDiscriminator(nn.Module):
    def __init__(self, chans: dict[int, int], in_channels: int, resolution: int, mbstd_group: int = 4):
        super().__init__()
        res = resolutions(resolution)
        self.from_rgb = EqualizedConv2d(in_channels, chans[resolution], 1)
        self.blocks = nn.Sequential(*[_DBlock(chans[r], chans[r // 2]) for r in reversed(res[1:])])
        self.mbstd = MinibatchStdDev(mbstd_group) if mbstd_group else None
        c4 = chans[4]
        self.conv = EqualizedConv2d(c4 + (1 if mbstd_group else 0), c4, 3)
        self.dense = EqualizedLinear(c4 * 16, c4)
        self.out = EqualizedLinear(c4, 1, gain=1.0)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.blocks(lrelu(self.from_rgb(x)))
        if self.mbstd is not None:
            h = self.mbstd(h)
        h = lrelu(self.dense(lrelu(self.conv(h)).flatten(1)))
        return self.out(h).view(-1)


def build(model_cfg, shape: tuple[int, ...], resolution: int) -> tuple[StyleGenerator, StyleDiscriminator]:
    """G and D at `resolution` (from ganlab.models.progressive.geometry) for data of `shape` (C, H, W)."""
    style = model_cfg.style
    if style not in STYLES:
        raise GanlabError(f"model.style={style!r} is unknown: use demod (StyleGAN2's weight demodulation) or adain "
                          "(StyleGAN's adaptive instance norm).")
    layers = model_cfg.mapping_layers
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise GanlabError(f"model.mapping_layers={layers!r} is not valid: give a number of layers >= 1 (the paper: 8).")
    chans = channels(model_cfg, resolution)
    g = StyleGenerator(int(model_cfg.z_dim), int(model_cfg.w_dim), chans, int(shape[0]), resolution, style,
                       layers, float(model_cfg.mapping_lr_mul), float(model_cfg.w_avg_beta))
    d = StyleDiscriminator(chans, int(shape[0]), resolution, int(model_cfg.minibatch_stddev))
    return g, d


class StyleSampler(nn.Module):
    """G as every sampler of the lab: g(z, y) -> images of the data's size in [-1, 1] (padding cropped),
    with random noise and the truncation `psi` (1: none; `ganlab sample ... truncation=0.7`)."""

    conditional, num_classes = False, None

    def __init__(self, g: StyleGenerator, pad: tuple[int, int], psi: float = 1.0):
        super().__init__()
        self.g, self.pad, self.psi = g, pad, psi
        self.z_dim = g.z_dim

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return crop(self.g(z, psi=self.psi), self.pad).clamp(-1, 1)

"""StyleGAN2 (Karras et al. 2020, config E/F), in pure PyTorch, with the parameter layout of the official
stylegan2-ada-pytorch networks (so `ganlab import stylegan2` maps an official pickle's weights one to one).

Resampling is the paper's: a [1, 3, 3, 1] FIR low-pass filter (`upfirdn2d`, ganlab's own, the same operation as
the official reference path: upsample by zero insertion, pad, convolve with the filter, downsample by dropping
pixels). G upsamples with a transposed 3x3 convolution of stride 2 followed by the filter (gain 4), D downsamples
by the filter followed by a stride-2 convolution; the skip image of G is upsampled by the filter alone.

G = mapping network + synthesis network:
- mapping: z (and the embedded class, c_dim > 0) normalized to unit mean square -> `mapping_layers` dense layers
  with LeakyReLU 0.2 (x sqrt 2), equalized lr scaled by `lr_multiplier` (0.01) -> w; the average w is tracked
  (beta 0.995) as a buffer; truncation pulls the ws of the first `cutoff` layers (all) toward it:
  w_avg + psi (w - w_avg).
- synthesis (architecture `skip`; `orig` and `resnet` also): a learned 4x4 constant; per resolution two
  modulated 3x3 convolutions (the first upsamples), each: the weight modulated by the style s = A(w) per input
  channel, demodulated per output channel (done as scale-conv-scale in training, as one grouped convolution
  in eval, as the official code does), plus per-pixel noise times a learned scalar strength (`noise_const`:
  the stored noise image), a bias and LeakyReLU 0.2 x sqrt 2, optionally clamped (`conv_clamp`); a modulated
  1x1 toRGB (no demodulation) per resolution adds to the upsampled running image.
- D (architecture `resnet`; `orig`, `skip` also): per resolution fromRGB (first block), conv 3x3, conv 3x3 with
  down 2, a 1x1 skip with down 2 (resnet: summed, each x sqrt 1/2); then the epilogue: minibatch stddev
  (group `mbstd_group_size`, `mbstd_num_channels` features), conv 3x3, dense, dense to 1 (or, c_dim > 0, a
  projection onto the class embedding by D's own mapping network).
Channels at resolution r: min(channel_base // r, channel_max) (official: 32768 or 16384, and 512).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab import distributed
from ganlab.errors import GanlabError

SUPPORTS = ("image",)
NOISE_MODES = ("random", "const", "none")
G_ARCHITECTURES = ("skip", "orig", "resnet")
D_ARCHITECTURES = ("resnet", "orig", "skip")
SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------- FIR resampling
def setup_filter(taps=(1, 3, 3, 1)) -> Tensor:
    """The 2D filter of `taps` (outer product), normalized to sum 1 (unit gain for a constant signal)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 1:
        f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: Tensor, f: Tensor | None, up: int = 1, down: int = 1, padding=(0, 0, 0, 0), gain: float = 1.0,
              flip_filter: bool = False) -> Tensor:
    """Upsample by `up` (zeros inserted), pad (or crop, negative) by (x0, x1, y0, y1), convolve every channel
    with the 2D FIR filter `f` (true convolution unless `flip_filter`), scaled by `gain` (the filter's sum is
    1), then downsample by `down` (every down-th pixel). The official reference path, written anew."""
    n, c, h, w = x.shape
    if isinstance(padding, int):
        padding = (padding,) * 4
    x0, x1, y0, y1 = padding
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0):x.shape[2] - max(-y1, 0), max(-x0, 0):x.shape[3] - max(-x1, 0)]
    if f is None:
        f = torch.ones(1, 1)
    f = (f * gain).to(device=x.device, dtype=x.dtype)
    if not flip_filter:
        f = f.flip([0, 1])
    weight = f[None, None].expand(c, 1, *f.shape)
    return F.conv2d(x, weight, groups=c, stride=down)  # the stride drops pixels exactly as slicing would


def _pads(f: Tensor, up: int, down: int, padding: int = 0) -> list[int]:
    """The padding (x0, x1, y0, y1) that keeps a `padding`-padded convolution's size through up/downsampling
    by the filter `f` (as the official conv2d_resample computes it)."""
    fw = fh = int(f.shape[-1])
    p = [padding] * 4
    if up > 1:
        p = [p[0] + (fw + up - 1) // 2, p[1] + (fw - up) // 2, p[2] + (fh + up - 1) // 2, p[3] + (fh - up) // 2]
    if down > 1:
        p = [p[0] + (fw - down + 1) // 2, p[1] + (fw - down) // 2, p[2] + (fh - down + 1) // 2,
             p[3] + (fh - down) // 2]
    return p


def upsample2d(x: Tensor, f: Tensor, up: int = 2) -> Tensor:
    """x2 upsampling by the filter (the skip image of G)."""
    fw = int(f.shape[-1])
    p = [(fw + up - 1) // 2, (fw - up) // 2] * 2
    return upfirdn2d(x, f, up=up, padding=(p[0], p[1], p[0], p[1]), gain=up * up)


def downsample2d(x: Tensor, f: Tensor, down: int = 2) -> Tensor:
    """/2 downsampling by the filter (the skip image of a `skip` D)."""
    fw = int(f.shape[-1])
    p = [(fw - down + 1) // 2, (fw - down) // 2]
    return upfirdn2d(x, f, down=down, padding=(p[0], p[1], p[0], p[1]))


def conv2d_resample(x: Tensor, w: Tensor, f: Tensor | None = None, up: int = 1, down: int = 1, padding: int = 0,
                    groups: int = 1) -> Tensor:
    """A convolution (correlation, as F.conv2d) with FIR up- or downsampling, padded once at the start:
    - 1x1 and down: filter and downsample, then convolve; 1x1 and up: convolve, then upsample by the filter;
    - down: filter, then a stride-2 convolution;
    - up: a stride-2 transposed convolution with the kernel as it is (a true convolution: the official layers
      choose that for upsampling, `flip_weight=False`, and their weights are trained so), then the filter with
      gain up^2;
    - neither: a plain padded convolution."""
    oc, icg, kh, kw = w.shape
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    px0, px1, py0, py1 = _pads(f, up, down, padding)
    if kh == 1 and kw == 1 and down > 1:
        return F.conv2d(upfirdn2d(x, f, down=down, padding=(px0, px1, py0, py1)), w, groups=groups)
    if kh == 1 and kw == 1 and up > 1:
        return upfirdn2d(F.conv2d(x, w, groups=groups), f, up=up, padding=(px0, px1, py0, py1), gain=up * up)
    if down > 1:
        return F.conv2d(upfirdn2d(x, f, padding=(px0, px1, py0, py1)), w, stride=down, groups=groups)
    # up > 1: transposed convolution, its weight (in, out/groups, k, k)
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, oc // groups, icg, kh, kw).transpose(1, 2).reshape(groups * icg, oc // groups, kh, kw)
    px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)


# ------------------------------------------------------------------------------------------- layers
def bias_act(x: Tensor, b: Tensor | None, act: str = "linear", gain: float = 1.0, clamp: float | None = None) -> Tensor:
    """Bias (per channel), activation (linear or LeakyReLU 0.2 with its sqrt 2 gain), an extra gain, a clamp."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2)).to(x.dtype)
    if act == "lrelu":
        x, gain = F.leaky_relu(x, 0.2), gain * SQRT2
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, noise: Tensor | None = None, up: int = 1,
                     padding: int = 0, resample_filter: Tensor | None = None, demodulate: bool = True,
                     fused: bool = False) -> Tensor:
    """StyleGAN2's modulated convolution (eq. 1 and 3): the weight scaled per input channel by each sample's
    style, then (demodulate) each output filter divided by its L2 norm; plus the noise. `fused`: as one
    grouped convolution over the batch (the official eval path); else by scaling the activations before and
    after a shared convolution (the official training path: the same numbers, cheaper backward)."""
    n = x.shape[0]
    oc, ic, kh, kw = weight.shape
    w = dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        return x if noise is None else x + noise.to(x.dtype)
    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(-1, ic, kh, kw).to(x.dtype), f=resample_filter, up=up, padding=padding, groups=n)
    x = x.reshape(n, -1, *x.shape[2:])
    return x if noise is None else x + noise.to(x.dtype)


class FullyConnectedLayer(nn.Module):
    """A dense layer with an equalized learning rate (weights N(0, 1) / lr_multiplier, scaled at run time)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain, self.bias_gain = lr_multiplier / math.sqrt(in_features), lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(nn.Module):
    """A convolution with an equalized learning rate, FIR up/downsampling, bias, activation and clamp."""

    convolutional = True  # for ganlab.optim.is_convolutional

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=gain, clamp=clamp)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, lr_multiplier: float = 0.01,
                 w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor | None, c: Tensor | None = None, psi: float = 1.0, cutoff: int | None = None,
                update_w_avg: bool = False) -> Tensor:
        """ws (N x num_ws x w_dim; N x w_dim when num_ws is None). `update_w_avg`: move the tracked average
        toward this batch's mean w (training). psi < 1: truncation of the first `cutoff` ws (all: None)."""
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.float())
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.float()))
            x = y if x is None else torch.cat([x, y], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.float()  # w in float32 under autocast too: the average and the truncation lerp stay exact
        if update_w_avg and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if psi != 1:
            if cutoff is None:
                x = self.w_avg.lerp(x, psi)
            else:
                x = torch.cat([self.w_avg.lerp(x[:, :cutoff], psi), x[:, cutoff:]], dim=1)
        return x


class SynthesisLayer(nn.Module):
    convolutional = True

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, resample_filter=(1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random", fused: bool = False, gain: float = 1.0) -> Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = distributed.rows(torch.randn, x.shape[0], 1, self.resolution, self.resolution, device=x.device,
                                     dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, fused=fused)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act="lrelu", gain=gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    convolutional = True

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: Tensor, w: Tensor, fused: bool = False) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, use_noise: bool = True):
        super().__init__()
        self.in_channels, self.resolution, self.is_last, self.architecture = in_channels, resolution, is_last, architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = self.num_torgb = 0
        layer = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, use_noise=use_noise,
                     resample_filter=resample_filter)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "random",
                fused: bool | None = None) -> tuple[Tensor, Tensor | None]:
        w_iter = iter(ws.unbind(dim=1))
        if fused is None:  # the official choice: fused in eval (float32), scale-conv-scale in training
            fused = not self.training
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode, fused)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode, fused)
            x = y + self.conv1(x, next(w_iter), noise_mode, fused, gain=math.sqrt(0.5))
        else:
            x = self.conv0(x, next(w_iter), noise_mode, fused)
            x = self.conv1(x, next(w_iter), noise_mode, fused)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused).float()
            img = y if img is None else img + y
        return x, img


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    return max(1, min(channel_base // resolution, channel_max))


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, architecture: str = "skip", conv_clamp: float | None = None,
                 resample_filter=(1, 3, 3, 1), use_noise: bool = True):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        ch = {r: channels_at(r, channel_base, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels, r == img_resolution,
                                   architecture, resample_filter, conv_clamp, use_noise)
            self.num_ws += block.num_conv + (block.num_torgb if r == img_resolution else 0)
            setattr(self, f"b{r}", block)

    def forward(self, ws: Tensor, noise_mode: str = "random", fused: bool | None = None) -> Tensor:
        """Images from ws (N x num_ws x w_dim): a block reads its convs' ws and the next one (its toRGB's)."""
        ws = ws.float()
        x = img = None
        w_idx = 0
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), noise_mode, fused)
            w_idx += block.num_conv
        return img


class StyleGenerator(nn.Module):
    """G: mapping + synthesis. `forward(z, c, psi, cutoff, noise_mode, mix_z, mix_cutoff, update_w_avg)`."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **(synthesis_kwargs or {}))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **(mapping_kwargs or {}))

    @property
    def n_ws(self) -> int:
        return self.num_ws

    def ws(self, z: Tensor, c: Tensor | None = None, psi: float = 1.0, cutoff: int | None = None,
           mix_z: Tensor | None = None, mix_cutoff: Tensor | int | None = None, update_w_avg: bool = False) -> Tensor:
        ws = self.mapping(z, c, psi=psi, cutoff=cutoff, update_w_avg=update_w_avg)
        if mix_z is not None:  # style mixing: layers >= mix_cutoff read mix_z's w (its mapping moves no average)
            ws = mix_ws(ws, self.mapping(mix_z, c, psi=psi, cutoff=cutoff), mix_cutoff)
        return ws

    def forward(self, z: Tensor, c: Tensor | None = None, psi: float = 1.0, cutoff: int | None = None,
                noise_mode: str = "random", mix_z: Tensor | None = None, mix_cutoff: Tensor | int | None = None,
                update_w_avg: bool = False, fused: bool | None = None) -> Tensor:
        return self.synthesis(self.ws(z, c, psi, cutoff, mix_z, mix_cutoff, update_w_avg), noise_mode, fused)


def mix_ws(ws1: Tensor, ws2: Tensor, cutoff: Tensor | int) -> Tensor:
    """Style mixing: layers < cutoff read ws1, layers >= cutoff ws2 (N x num_ws x w_dim each). `cutoff`
    may be a 0-d device tensor: nothing is read on the host."""
    layer = torch.arange(ws1.shape[1], device=ws1.device)[None, :, None]
    return torch.where(layer < cutoff, ws1, ws2)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", resample_filter=(1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2,
                                 resample_filter=resample_filter, conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x: Tensor | None, img: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.in_channels == 0 or self.architecture == "skip":
            y = self.fromrgb(img)
            x = y if x is None else x + y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(nn.Module):
    """The minibatch standard deviation (Karras et al. 2018), as StyleGAN2 has it: the batch split into groups
    of `group_size` samples (the official layout: group member k of every group is the k-th slice of N/G), the
    channels into `num_channels` parts; each part's std over its group, averaged, appended as a channel."""

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        if n % g:  # the official code needs N divisible by G; the largest group that divides N keeps its meaning
            g = next(k for k in range(g, 0, -1) if n % k == 0)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: int | None = 4, mbstd_num_channels: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.cmap_dim, self.architecture = cmap_dim, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, 1, activation="lrelu")
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: Tensor, img: Tensor | None, cmap: Tensor | None) -> Tensor:
        x = x.float()
        if self.architecture == "skip":
            x = x + self.fromrgb(img.float())
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class StyleDiscriminator(nn.Module):
    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, conv_clamp: float | None = None,
                 cmap_dim: int | None = None, mbstd_group_size: int | None = 4, mbstd_num_channels: int = 1,
                 mapping_kwargs: dict | None = None, resample_filter=(1, 3, 3, 1)):
        super().__init__()
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(int(math.log2(img_resolution)), 2, -1)]
        ch = {r: channels_at(r, channel_base, channel_max) for r in self.block_resolutions + [4]}
        cmap_dim = (ch[4] if cmap_dim is None else cmap_dim) if c_dim > 0 else 0
        for r in self.block_resolutions:
            setattr(self, f"b{r}", DiscriminatorBlock(ch[r] if r < img_resolution else 0, ch[r], ch[r // 2], r,
                                                      img_channels, architecture, resample_filter, conv_clamp))
        if c_dim > 0:
            self.mapping = MappingNetwork(0, c_dim, cmap_dim, None, w_avg_beta=None, **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(ch[4], cmap_dim, 4, img_channels, architecture, mbstd_group_size,
                                        mbstd_num_channels, conv_clamp)

    def forward(self, img: Tensor, c: Tensor | None = None) -> Tensor:
        """N scores (the official D's N x 1, flattened)."""
        x = None
        for r in self.block_resolutions:
            x, img = getattr(self, f"b{r}")(x, img)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap).view(-1)


# --------------------------------------------------------------------------------- from ganlab's config
def _int_or_none(value, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise GanlabError(f"model.{key}={value!r} is not valid: give a positive integer or null.")
    return value


def network_kwargs(model_cfg, img_channels: int, resolution: int, c_dim: int = 0) -> tuple[dict, dict]:
    """(G's constructor arguments, D's) from model.*: what `ganlab import stylegan2` writes back as config."""
    m = model_cfg
    for key, allowed in (("g_architecture", G_ARCHITECTURES), ("d_architecture", D_ARCHITECTURES)):
        if m.get(key, allowed[0]) not in allowed:
            raise GanlabError(f"model.{key}={m[key]!r} is not valid: use one of {', '.join(allowed)}.")
    layers = m.mapping_layers
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise GanlabError(f"model.mapping_layers={layers!r} is not valid: give a number of layers >= 1 (the paper: 8).")
    base, cmax = m.get("channel_base", 4096), m.get("channel_max", 128)
    for key, value in (("channel_base", base), ("channel_max", cmax), ("z_dim", m.z_dim), ("w_dim", m.w_dim)):
        _int_or_none(value, key)
    clamp = m.get("conv_clamp")
    if clamp is not None and (isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or clamp <= 0):
        raise GanlabError(f"model.conv_clamp={clamp!r} is not valid: a positive number (official: 256) or null.")
    synthesis = dict(channel_base=int(base), channel_max=int(cmax), architecture=m.get("g_architecture", "skip"),
                     conv_clamp=clamp)
    mapping = dict(num_layers=int(layers), lr_multiplier=float(m.mapping_lr_mul), w_avg_beta=float(m.w_avg_beta))
    g = dict(z_dim=int(m.z_dim), c_dim=c_dim, w_dim=int(m.w_dim), img_resolution=resolution, img_channels=img_channels,
             mapping_kwargs=mapping, synthesis_kwargs=synthesis)
    group = _int_or_none(m.get("minibatch_stddev", 4), "minibatch_stddev") if m.get("minibatch_stddev", 4) else None
    d = dict(c_dim=c_dim, img_resolution=resolution, img_channels=img_channels,
             architecture=m.get("d_architecture", "resnet"), channel_base=int(base), channel_max=int(cmax),
             conv_clamp=clamp, mbstd_group_size=group,
             mbstd_num_channels=int(m.get("mbstd_num_channels", 1)) if m.get("minibatch_stddev", 4) else 0,
             mapping_kwargs=dict(num_layers=int(m.get("d_mapping_layers", 8))))
    return g, d


def build(model_cfg, shape: tuple[int, ...], resolution: int, c_dim: int = 0) -> tuple[StyleGenerator, StyleDiscriminator]:
    """G and D at `resolution` (from ganlab.models.progressive.geometry) for data of `shape` (C, H, W)."""
    g_kw, d_kw = network_kwargs(model_cfg, int(shape[0]), resolution, c_dim)
    return StyleGenerator(**g_kw), StyleDiscriminator(**d_kw)


def crop(x: Tensor, pad: tuple[int, int]) -> Tensor:
    before, after = pad
    if before == 0 and after == 0:
        return x
    return x[..., before:x.shape[-2] - after, before:x.shape[-1] - after]


class StyleSampler(nn.Module):
    """G as every sampler of the lab: g(z, y) -> images of the data's size in [-1, 1] (padding cropped), with
    the truncation `psi` (1: none) from `cutoff` (None: every layer) and the noise `noise_mode` (random: fresh
    noise per image; const: the network's stored noise images, as the official noise_mode='const')."""

    def __init__(self, g: StyleGenerator, pad: tuple[int, int], psi: float = 1.0, cutoff: int | None = None,
                 noise_mode: str = "random"):
        super().__init__()
        self.g, self.pad, self.psi, self.cutoff, self.noise_mode = g, pad, psi, cutoff, noise_mode
        self.z_dim = g.z_dim
        self.conditional = g.c_dim > 0
        self.num_classes = g.c_dim if g.c_dim > 0 else None

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        c = None if y is None or not self.conditional else F.one_hot(y.long(), self.g.c_dim).float()
        return crop(self.g(z, c, psi=self.psi, cutoff=self.cutoff, noise_mode=self.noise_mode), self.pad).clamp(-1, 1)


def numpy_free(value):
    """Official pickles keep some settings as numpy scalars: plain Python numbers for ganlab's config."""
    if isinstance(value, np.generic):
        return value.item()
    return value

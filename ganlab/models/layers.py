"""Layers of the Karras family (PG-GAN, StyleGAN): equalized learning rate and pixel norm.

Equalized learning rate (Karras et al. 2018, sec. 4.1): the stored weights are drawn from N(0, 1)
(divided by the lr multiplier) and scaled at run time by He's constant gain / sqrt(fan_in) (times the
lr multiplier), so every layer learns at the same speed under Adam whatever its fan-in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT2 = math.sqrt(2.0)


class EqualizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, lr_mul: float = 1.0,
                 bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.scale, self.lr_mul = gain / math.sqrt(in_features) * lr_mul, lr_mul

    def effective_weight(self) -> Tensor:
        return self.weight * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias * self.lr_mul)


class EqualizedConv2d(nn.Module):
    """A stride-1 'same' convolution with an equalized learning rate."""

    convolutional = True  # for ganlab.optim.is_convolutional (not an nn.Conv2d subclass)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = SQRT2, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale, self.padding = gain / math.sqrt(in_channels * kernel_size * kernel_size), kernel_size // 2

    def effective_weight(self) -> Tensor:
        return self.weight * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Each pixel's feature vector scaled to unit mean square (Karras et al. 2018, sec. 4.2)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)

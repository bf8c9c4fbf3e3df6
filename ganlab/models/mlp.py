"""Fully connected G and D (the classic Keras MNIST GAN; the WGAN-GP toy MLPs for 2D points)."""

from __future__ import annotations

import math

from torch import nn

from ganlab.models.base import MinibatchStdDev

SUPPORTS = ("image", "points")
JOIN = "flat"


def activation(name: str, slope: float) -> nn.Module:
    return nn.LeakyReLU(slope) if name == "leaky_relu" else nn.ReLU()


class MLPGenerator(nn.Module):
    def __init__(self, in_dim, hidden, out_shape, norm, act, slope, tanh):
        super().__init__()
        layers, width = [], in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h, bias=norm != "batch"))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act, slope))
            width = h
        layers.append(nn.Linear(width, math.prod(out_shape)))
        if tanh:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.out_shape = tuple(out_shape)

    def forward(self, z):
        return self.net(z).view(-1, *self.out_shape)


def mlp_features(in_dim, hidden, norm, slope, mbstd_group=0) -> tuple[nn.Module, int]:
    layers, width = [nn.Flatten()], in_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif norm == "layer":
            layers.append(nn.LayerNorm(h))
        layers.append(nn.LeakyReLU(slope))
        width = h
    if mbstd_group:
        layers.append(MinibatchStdDev(mbstd_group))
        width += 1
    return nn.Sequential(*layers), width


def build(cfg, shape: tuple[int, ...], kind: str, g_in: int, d_extra: int):
    g = MLPGenerator(g_in, list(cfg.g_hidden), shape, cfg.g_norm, cfg.g_act, cfg.leaky_slope, tanh=kind == "image")
    features, feat_dim = mlp_features(math.prod(shape) + d_extra, list(cfg.d_hidden), cfg.d_norm,
                                      cfg.leaky_slope, cfg.minibatch_stddev)
    return g, features, feat_dim

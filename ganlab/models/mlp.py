"""Fully connected G and D (the classic Keras MNIST GAN; the WGAN-GP toy MLPs for 2D points)."""

from __future__ import annotations

import math

from torch import nn

SUPPORTS = ("image", "points")


def activation(name: str, slope: float) -> nn.Module:
    return nn.LeakyReLU(slope) if name == "leaky_relu" else nn.ReLU()


class MLPGenerator(nn.Module):
    def __init__(self, z_dim, hidden, out_shape, norm, act, slope, tanh):
        super().__init__()
        layers, width = [], z_dim
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


class MLPDiscriminator(nn.Module):
    def __init__(self, in_shape, hidden, norm, slope):
        super().__init__()
        layers, width = [nn.Flatten()], math.prod(in_shape)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            elif norm == "layer":
                layers.append(nn.LayerNorm(h))
            layers.append(nn.LeakyReLU(slope))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).view(-1)


def build(cfg, shape: tuple[int, ...], kind: str):
    g = MLPGenerator(cfg.z_dim, list(cfg.g_hidden), shape, cfg.g_norm, cfg.g_act, cfg.leaky_slope,
                     tanh=kind == "image")
    d = MLPDiscriminator(shape, list(cfg.d_hidden), cfg.d_norm, cfg.leaky_slope)
    return g, d

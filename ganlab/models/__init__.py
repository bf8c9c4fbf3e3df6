"""Model families' architectures. `build_models(cfg.model, source)` returns (G, D).

Every G maps z (N x z_dim) to a sample shaped like the data; every D maps a sample to one
unbounded score per sample (a logit for the GAN losses, a critic value for Wasserstein): the
losses in ganlab.losses apply the sigmoid where they need it.
"""

from __future__ import annotations

import torch
from torch import nn

from ganlab.errors import GanlabError
from ganlab.models import dcgan, mlp

BACKBONES = {"mlp": mlp, "dcgan": dcgan}


def resolve_backbone(model_cfg, kind: str) -> str:
    backbone = model_cfg.backbone
    if backbone == "auto":
        backbone = "mlp" if kind == "points" else "dcgan"
    if kind not in BACKBONES[backbone].SUPPORTS:
        raise GanlabError(
            f"model={model_cfg.name} (backbone {backbone}) cannot train on {kind} data: a convolutional "
            "model needs images. Use model=gan or model=wgan_gp (MLP backbones) for the 2D sets, "
            "or an image dataset (mnist, fashion_mnist, cifar10, image_folder)."
        )
    return backbone


def init_weights(module: nn.Module, std: float | None) -> None:
    """N(0, std) for conv/linear weights, N(1, std) for norm scales, zero biases (DCGAN's init)."""
    if std is None:
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def build_models(model_cfg, source) -> tuple[nn.Module, nn.Module]:
    backbone = resolve_backbone(model_cfg, source.kind)
    g, d = BACKBONES[backbone].build(model_cfg, tuple(source.shape), source.kind)
    init_weights(g, model_cfg.init_std)
    init_weights(d, model_cfg.init_std)
    g.z_dim = int(model_cfg.z_dim)
    return g, d


def sample_z(n: int, z_dim: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """The latent prior: standard normal."""
    return torch.randn(n, z_dim, generator=generator, device=device)

"""Model families' architectures. `build_models(cfg.model, source)` returns (G, D).

Every G maps z (N x z_dim), and a label for conditional models, to a sample shaped like the data;
every D maps a sample (and label) to one unbounded score per sample (a logit for the GAN losses,
a critic value for Wasserstein): the losses in ganlab.losses apply the sigmoid where they need it.
With `model.pack` m > 1 (PacGAN), D's input is a pack of m samples (`d_pack`) and it scores packs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ganlab import distributed
from ganlab.errors import GanlabError
from ganlab.models import dcgan, mlp, resnet
from ganlab.models.base import Discriminator, Generator, MinibatchDiscrimination, apply_spectral_norm, pack_samples

BACKBONES = {"mlp": mlp, "dcgan": dcgan, "resnet": resnet}


def resolve_backbone(model_cfg, kind: str) -> str:
    backbone = model_cfg.backbone
    if backbone == "auto":
        backbone = "mlp" if kind == "points" else "dcgan"
    if kind not in BACKBONES[backbone].SUPPORTS:
        raise GanlabError(
            f"model={model_cfg.name} (backbone {backbone}) cannot train on {kind} data: a convolutional "
            "model needs images. Use a family with an MLP backbone (gan, wgan, wgan_gp, lsgan, sngan, cgan) "
            "for the 2D sets, or an image dataset (mnist, fashion_mnist, cifar10, image_folder)."
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


def build_models(model_cfg, source) -> tuple[Generator, Discriminator]:
    backbone = resolve_backbone(model_cfg, source.kind)
    module = BACKBONES[backbone]
    num_classes = None
    if model_cfg.conditional:
        num_classes = getattr(source, "num_classes", None)
        if not num_classes:
            raise GanlabError(
                f"model.conditional=true needs a labelled dataset; {source.name} has no labels. "
                "Use mnist, fashion_mnist, cifar10, ring8 or grid25, or model.conditional=false."
            )
    embed_dim = int(model_cfg.embed_dim) if num_classes else 0
    d_extra = num_classes if num_classes and model_cfg.cond_d == "concat" else 0
    pack = int(model_cfg.get("pack", 1))
    if pack > 1:  # D's input is a pack of m samples (pack_samples): m times the channels, or the features
        d_extra += (pack - 1) * (source.shape[0] if module.JOIN == "channels" else math.prod(source.shape))
    g_net, features, feat_dim = module.build(model_cfg, tuple(source.shape), source.kind,
                                             int(model_cfg.z_dim) + embed_dim, d_extra)
    kernels = int(model_cfg.get("minibatch_disc", 0))
    if kernels:  # Salimans et al. 2016: B closeness-to-the-batch numbers joined to D's features before its head
        features = nn.Sequential(features, MinibatchDiscrimination(feat_dim, kernels, int(model_cfg.minibatch_disc_dim)))
        feat_dim += kernels
    g = Generator(g_net, int(model_cfg.z_dim), num_classes, embed_dim)
    d = Discriminator(features, feat_dim, num_classes, model_cfg.cond_d, module.JOIN)
    init_weights(g, model_cfg.init_std)
    init_weights(d, model_cfg.init_std)
    if model_cfg.spectral_norm:
        apply_spectral_norm(d)
    return g, d


def d_pack(model_cfg, source) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that turns a batch into D's input: PacGAN's packs of model.pack samples (identity at 1)."""
    pack = int(model_cfg.get("pack", 1))
    join = BACKBONES[resolve_backbone(model_cfg, source.kind)].JOIN
    return lambda x: pack_samples(x, pack, join)


def sample_z(n: int, z_dim: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """The latent prior: standard normal. From `generator`, or from the training stream (under torchrun:
    this rank's n rows of the global batch's latents, ganlab.distributed.rows)."""
    if generator is not None:
        return torch.randn(n, z_dim, generator=generator, device=device)
    return distributed.rows(torch.randn, n, z_dim, device=device)


@torch.no_grad()
def generate(g: Generator, n: int | None = None, labels=None, generator: torch.Generator | None = None,
             device=None, batch_size: int = 512, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Samples from G in eval mode: n of them, or one per entry of `labels` for conditional models, or one
    per row of the given latents `z` (N x z_dim), in their order.

    Returns (samples, labels). Unconditional models take no labels; conditional ones draw uniform
    labels when none are given.
    """
    device = device or next(g.parameters()).device
    if z is not None:
        if z.dim() != 2 or z.shape[1] != g.z_dim:
            raise GanlabError(f"the latents are {tuple(z.shape)}; this generator takes N x {g.z_dim}.")
        if labels is not None and len(torch.as_tensor(labels).view(-1)) not in (1, len(z)):
            raise GanlabError(f"{len(torch.as_tensor(labels).view(-1))} labels for {len(z)} latents: give one label "
                              "for all or one per latent.")
        if labels is not None and len(torch.as_tensor(labels).view(-1)) == 1:
            labels = torch.as_tensor(labels).view(-1).repeat(len(z))
        n = len(z)
    if labels is not None:
        if not g.conditional:
            raise GanlabError("labels were given but this model is not conditional (model.conditional=false).")
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).view(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= g.num_classes):
            raise GanlabError(f"labels must lie in 0..{g.num_classes - 1} for this model.")
        n = labels.numel()
    elif g.conditional:
        labels = torch.randint(g.num_classes, (n,), generator=generator, device="cpu").to(device)
    if n is None:
        raise GanlabError("say how many samples to draw (n) or which labels.")
    was_training = g.training
    g.eval()
    try:
        out = []
        for start in range(0, n, batch_size):
            zs = (sample_z(min(batch_size, n - start), g.z_dim, generator=generator) if z is None
                  else z[start:start + batch_size].float()).to(device)
            y = None if labels is None else labels[start:start + batch_size]
            out.append(g(zs, y))
    finally:
        g.train(was_training)
    return torch.cat(out), labels


def validate_model(m, batch_size: int) -> None:
    """model.* that every family reads (a family's own keys are checked where it builds its nets)."""
    from ganlab.checks import adversarial_only, boolean, one_of, positive

    positive(m.z_dim, "model.z_dim")
    positive(m.width, "model.width")
    if m.get("d_width") is not None:
        positive(m.d_width, "model.d_width")
    one_of(m.backbone, "model.backbone", ("mlp", "dcgan", "resnet", "auto"), "mlp, dcgan, resnet or auto")
    for key, allowed in (("g_norm", ("batch", "none")), ("d_norm", ("batch", "layer", "none")),
                         ("g_act", ("relu", "leaky_relu")), ("cond_d", ("concat", "projection"))):
        one_of(m[key], f"model.{key}", allowed, f"one of {', '.join(allowed)}")
    if m.init_std is not None:
        positive(m.init_std, "model.init_std", integer=False)
    positive(m.minibatch_stddev, "model.minibatch_stddev", allow_zero=True)
    positive(m.get("minibatch_disc", 0), "model.minibatch_disc", allow_zero=True)
    if m.get("minibatch_disc", 0):
        positive(m.minibatch_disc_dim, "model.minibatch_disc_dim")
        adversarial_only(m, f"model.minibatch_disc={m.minibatch_disc}", "model.minibatch_disc=0")
    positive(m.pack, "model.pack")
    if m.pack > 1:
        adversarial_only(m, f"model.pack={m.pack}", "model.pack=1")
        if m.conditional:
            raise GanlabError(f"model.pack={m.pack} packs unlabelled samples: a conditional D judges one sample and "
                              "its label. Set model.conditional=false or model.pack=1.")
        if batch_size % m.pack:
            raise GanlabError(f"model.pack={m.pack} needs train.batch_size divisible by it (got {batch_size}); "
                              f"e.g. train.batch_size={max(m.pack, batch_size // m.pack * m.pack)}.")
    positive(m.embed_dim, "model.embed_dim")
    for key in ("spectral_norm", "conditional"):
        boolean(m[key], f"model.{key}")
    for key in ("g_hidden", "d_hidden"):
        for width in m[key]:
            positive(width, f"model.{key} entries")

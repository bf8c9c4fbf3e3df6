"""Optimizers from the `optimizer` config group, for any objective's networks."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def make_optimizer(opt_cfg: DictConfig, params, role: str, device: torch.device | None = None,
                   convolutional: bool = False) -> torch.optim.Optimizer:
    """One optimizer over `params` from the `optimizer` group (a `_partial_` target). `role` "g" or
    "d" picks optimizer.lr_g / lr_d over optimizer.lr when set (TTUR, Heusel et al. 2017).

    `optimizer.fused: null` (the Adam configs' default) picks Adam's fused kernel (one kernel for all
    parameters, the step count kept on the device, and with fp16 the grad scaler's inf check folded
    in: no host sync per step) where it pays: on CUDA and the other accelerators always; on CPU for
    models without convolutions, where the optimizer step is a large share of a GAN step (MLP gan
    at MNIST size: 1.28x steps/s). CPU conv models keep the per-parameter loop, measured 4-6% faster
    there (wgan_gp 28px; dcgan even). `optimizer.fused=true|false` decides it by hand."""
    cfg = OmegaConf.to_container(opt_cfg, resolve=True)
    lr_g, lr_d = cfg.pop("lr_g", None), cfg.pop("lr_d", None)
    own = {"g": lr_g, "d": lr_d}.get(role)
    if cfg["_target_"] in ("torch.optim.Adam", "torch.optim.AdamW") and cfg.get("fused") is None:
        pays = device is not None and device.type in _fused_devices() and (device.type != "cpu" or not convolutional)
        cfg["fused"] = True if pays else None
    return instantiate(cfg)(params, lr=own if own is not None else cfg["lr"])


def is_convolutional(*modules: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.conv._ConvNd) or getattr(m, "convolutional", False)
               for module in modules for m in module.modules())


def make_optimizers(opt_cfg: DictConfig, g: torch.nn.Module, d: torch.nn.Module, device: torch.device | None = None):
    """(G's optimizer, D's optimizer), each as `make_optimizer` says; fused Adam is decided for the
    pair (both or neither)."""
    conv = is_convolutional(g, d)
    return (make_optimizer(opt_cfg, g.parameters(), "g", device, conv),
            make_optimizer(opt_cfg, d.parameters(), "d", device, conv))


def _fused_devices() -> tuple[str, ...]:
    """Device types with fused Adam kernels (a private torch helper; CUDA alone if it moves)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:
        return ("cuda",)


def validate_optimizer(opt) -> None:
    """optimizer.*: positive learning rates, two betas in [0, 1), a momentum in [0, 1)."""
    from ganlab.checks import positive
    from ganlab.errors import GanlabError

    for key in ("lr", "lr_g", "lr_d"):
        if key in opt and opt[key] is not None:
            positive(opt[key], f"optimizer.{key}", integer=False)
    if "momentum" in opt and not (isinstance(opt.momentum, (int, float)) and not isinstance(opt.momentum, bool)
                                  and 0 <= opt.momentum < 1):
        raise GanlabError(f"optimizer.momentum={opt.momentum!r} is not valid: give a number in [0, 1), e.g. 0.5.")
    if "betas" in opt:
        betas = list(opt.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise GanlabError(f"optimizer.betas={betas} is not valid: give two numbers in [0, 1), e.g. [0.5,0.999].")

"""`ganlab sample`: samples from a trained run's generator into an .npz file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ganlab.checkpoint import checkpoint_path, load_checkpoint
from ganlab.device import resolve_device
from ganlab.errors import GanlabError
from ganlab.models import generate
from ganlab.objectives import load_generator, with_truncation


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] N x C x H x W -> uint8 N x H x W x C, rounded like torchvision's save_image."""
    return x.clamp(-1, 1).add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sample_run(cfg) -> Path:
    if cfg.n is None or int(cfg.n) <= 0:
        raise GanlabError(f"n={cfg.n} is not valid: it must be an integer > 0.")
    device = resolve_device(cfg.device)
    state = with_truncation(load_checkpoint(checkpoint_path(cfg.run, cfg.checkpoint)), cfg.get("jacobian_truncation"))
    g = load_generator(state, ema=bool(cfg.ema), device=device)
    psi = cfg.get("truncation")
    if psi is not None:
        if not isinstance(psi, (int, float)) or isinstance(psi, bool) or not math.isfinite(psi):
            raise GanlabError(f"truncation={psi!r} is not valid: give psi as a number, e.g. truncation=0.7 (1: none, "
                              "0: every sample is the average w's image).")
        if not hasattr(g, "psi"):
            raise GanlabError(f"truncation needs a generator with a mapping network (model=stylegan); this run is "
                              f"model={state['config']['model']['name']}. Drop truncation=.")
        g.psi = float(psi)
    torch.manual_seed(int(cfg.seed))  # noise inputs (StyleGAN) draw from the global generator
    labels = cfg.labels
    if labels is not None:
        labels = [int(labels)] * int(cfg.n) if isinstance(labels, int) else [int(v) for v in labels]
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x, y = generate(g, None if labels is not None else int(cfg.n), labels=labels, generator=gen, device=device,
                    batch_size=int(cfg.batch_size))
    arrays = {"arr_0": to_uint8_nhwc(x) if x.dim() == 4 else x.float().cpu().numpy()}
    if y is not None:
        arrays["labels"] = y.cpu().numpy().astype(np.int64)
    out = Path(str(cfg.out)).expanduser()
    if out.suffix != ".npz":
        raise GanlabError(f"out={cfg.out}: give a file name ending in .npz.")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"{len(x)} samples ({'x'.join(map(str, arrays['arr_0'].shape[1:]))}, {arrays['arr_0'].dtype}) "
          f"from {state['config']['model']['name']} step {state['step']} -> {out}")
    return out

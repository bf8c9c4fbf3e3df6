"""`ganlab sample`: samples from a trained run's generator into an .npz file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganlab.checkpoint import checkpoint_path, load_checkpoint
from ganlab.device import resolve_device
from ganlab.errors import GanlabError
from ganlab.models import generate
from ganlab.objectives import load_generator, with_sampling, with_truncation
from ganlab.writeguard import file_out


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] N x C x H x W -> uint8 N x H x W x C, rounded like torchvision's save_image."""
    return x.clamp(-1, 1).add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def read_latents(path) -> torch.Tensor:
    """z=FILE.npy: an N x z_dim array of latents (numbers only: np.load refuses pickled objects)."""
    path = Path(str(path)).expanduser()
    if path.suffix != ".npy" or not path.is_file():
        raise GanlabError(f"z={path}: give an existing .npy file holding an N x z_dim array of latents.")
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise GanlabError(f"z={path} is not a plain numeric .npy array ({exc}); save it with numpy.save.") from None
    if z.ndim != 2 or not np.issubdtype(z.dtype, np.number):
        raise GanlabError(f"z={path} holds a {z.dtype} array of shape {z.shape}; give N x z_dim numbers.")
    return torch.from_numpy(z.astype(np.float32))


def sample_run(cfg) -> Path:
    z = None if cfg.get("z") is None else read_latents(cfg.z)
    if z is None and (cfg.n is None or int(cfg.n) <= 0):
        raise GanlabError(f"n={cfg.n} is not valid: it must be an integer > 0.")
    if Path(str(cfg.out)).suffix != ".npz":
        raise GanlabError(f"out={cfg.out}: give a file name ending in .npz.")
    out = file_out(cfg, "samples")
    device = resolve_device(cfg.device)
    state = with_truncation(load_checkpoint(checkpoint_path(cfg.run, cfg.checkpoint)), cfg.get("jacobian_truncation"))
    state = with_sampling(state, cfg.get("truncation"), cfg.get("truncation_cutoff"), cfg.get("noise"))
    g = load_generator(state, ema=bool(cfg.ema), device=device)
    if z is not None and z.shape[1] != g.z_dim:
        raise GanlabError(f"z={cfg.z} holds {tuple(z.shape)} latents; this run's generator takes N x {g.z_dim}.")
    torch.manual_seed(int(cfg.seed))  # noise inputs (StyleGAN's random noise) draw from the global generator
    labels = cfg.labels
    if labels is not None:
        count = len(z) if z is not None else int(cfg.n)
        labels = [int(labels)] * count if isinstance(labels, int) else [int(v) for v in labels]
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x, y = generate(g, None if labels is not None or z is not None else int(cfg.n), labels=labels, generator=gen,
                    device=device, batch_size=int(cfg.batch_size), z=z)
    arrays = {"arr_0": to_uint8_nhwc(x) if x.dim() == 4 else x.float().cpu().numpy()}
    if y is not None:
        arrays["labels"] = y.cpu().numpy().astype(np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"{len(x)} samples ({'x'.join(map(str, arrays['arr_0'].shape[1:]))}, {arrays['arr_0'].dtype}) "
          f"from {state['config']['model']['name']} step {state['step']} -> {out}")
    return out

"""`ganlab interpolate`: latent interpolation strips of a trained generator.

Each row walks from one latent z0 to another z1 in `steps` images. Gaussian latents are interpolated
on the sphere (slerp, White 2016): a straight line between two Gaussian draws passes through
low-norm points the G never saw in training, which shows up as washed-out middles; slerp keeps the
norm typical. Conditional models interpolate within a class: row k keeps class k mod K. The strip is
written as a PNG and logged to the run's TensorBoard (`Interpolation/<mode>`, at the checkpoint's step).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ganlab.checkpoint import checkpoint_path, load_checkpoint
from ganlab.device import resolve_device
from ganlab.errors import GanlabError
from ganlab.models import sample_z
from ganlab.objectives import load_generator
from ganlab.tricks import walkable
from ganlab.viz import image_grid, save_png
from ganlab.writeguard import file_out


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of z0 and z1 (N x D) at fractions t (T): N x T x D. Falls back
    to the straight line where the two are (nearly) parallel."""
    n0, n1 = z0.norm(dim=1, keepdim=True), z1.norm(dim=1, keepdim=True)
    cos = ((z0 / n0) * (z1 / n1)).sum(1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)[:, None]                       # N x 1 x 1
    t = t.view(1, -1, 1).to(z0)
    sin = torch.sin(omega)
    small = sin.abs() < 1e-6
    w0 = torch.where(small, 1 - t, torch.sin((1 - t) * omega) / torch.where(small, torch.ones_like(sin), sin))
    w1 = torch.where(small, t, torch.sin(t * omega) / torch.where(small, torch.ones_like(sin), sin))
    return w0 * z0[:, None] + w1 * z1[:, None]


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(1, -1, 1).to(z0)
    return (1 - t) * z0[:, None] + t * z1[:, None]


MODES = {"slerp": slerp, "lerp": lerp}


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GanlabError(f"{name}={value!r} is not valid: it must be an integer >= {minimum} (e.g. {name}={max(minimum, 8)}).")
    return value


def interpolate_run(cfg) -> Path:
    n, steps = _count(cfg.n, "n", 1), _count(cfg.steps, "steps", 2)
    if cfg.mode not in MODES:
        raise GanlabError(f"mode={cfg.mode!r} is not valid: use slerp (Gaussian latents) or lerp.")
    if Path(str(cfg.out)).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise GanlabError(f"out={cfg.out}: give an image file name ending in .png (or .jpg).")
    out = file_out(cfg, "interpolation strip")
    ckpt = checkpoint_path(cfg.run, cfg.checkpoint)
    state = load_checkpoint(ckpt)
    device = resolve_device(cfg.device)
    g = walkable(load_generator(state, ema=bool(cfg.ema), device=device))  # one G's latent space, untruncated
    name = state["config"]["model"]["name"]
    gen = torch.Generator().manual_seed(int(cfg.seed))
    z0, z1 = sample_z(n, g.z_dim, generator=gen), sample_z(n, g.z_dim, generator=gen)
    z = MODES[cfg.mode](z0, z1, torch.linspace(0, 1, steps)).reshape(n * steps, g.z_dim).float().to(device)
    y = None
    if getattr(g, "conditional", False):  # row k: class k mod K, the same class along the row
        y = (torch.arange(n) % int(g.num_classes)).repeat_interleave(steps).to(device)
    torch.manual_seed(int(cfg.seed))  # noise inputs (StyleGAN): the same draw for every image of a call
    g.eval()
    with torch.no_grad():
        x = torch.cat([g(z[i:i + 500], None if y is None else y[i:i + 500]) for i in range(0, len(z), 500)])
    if x.dim() != 4:
        raise GanlabError(f"ganlab interpolate draws image strips; model={name} was trained on points "
                          f"(its samples are {tuple(x.shape[1:])}): use ganlab sample.")
    grid = image_grid(x, nrow=steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(grid, out)
    if cfg.tensorboard:
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
        if run_dir is not None and (run_dir / "tb").is_dir():
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(run_dir / "tb")) as writer:
                writer.add_image(f"Interpolation/{cfg.mode}", grid, int(state["step"]))
    what = f"class k mod {g.num_classes} in row k" if y is not None else "unconditional"
    print(f"{n} rows x {steps} steps ({cfg.mode}, {what}) from {name} step {state['step']} -> {out}"
          + (f"; TensorBoard: Interpolation/{cfg.mode} in {run_dir / 'tb'}" if cfg.tensorboard and run_dir else ""))
    return out

"""Hole masks for inpainting, drawn on the device: N x 1 x H x W float, 1 in the hole, 0 where the
pixel is known (a user's mask image: white = hole).

- `center`: the central square of area ratio x H x W (Pathak et al. 2016: 64 x 64 of 128 x 128,
  ratio 0.25); the same for every image, no randomness.
- `random_box`: one rectangle per image, area ratio x H x W (rounded to whole pixels), aspect ratio
  drawn log-uniformly in [1/2, 2], placed uniformly inside the image.
- `free_form`: irregular brush strokes (DeepFill v2's mask generator, Yu et al. 2019: polylines of
  random vertices, angles and widths): up to `max_strokes` strokes are drawn and the first k kept, k
  chosen per image so that the hole's area is closest to the ratio.

Every draw comes from the torch RNG of the mask's device (or `generator`, a CPU torch.Generator
for fixed sets), and nothing is read back to the host: a run draws the same masks again after a
resume, and `torch.manual_seed(s)` reproduces them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ganlab import distributed
from ganlab.errors import GanlabError

KINDS = ("center", "random_box", "free_form")


def _rand(shape, generator: torch.Generator | None, device) -> Tensor:
    """U(0, 1) from `generator` (on its own device) or the global RNG of `device`, then on `device`."""
    if generator is not None:
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    return distributed.rows(torch.rand, shape[0], *shape[1:], device=device)  # per image (rank's rows)


def check(kind: str, ratio) -> None:
    if kind not in KINDS:
        raise GanlabError(f"mask={kind!r} is not valid: use {', '.join(KINDS)}.")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise GanlabError(f"mask_ratio={ratio!r} is not valid: give the hole's share of the image in (0, 1), "
                          "e.g. 0.25 (the context encoder's central quarter).")


def center(n: int, size: tuple[int, int], ratio: float, device=None) -> Tensor:
    h, w = size
    side_h, side_w = max(1, round(h * math.sqrt(ratio))), max(1, round(w * math.sqrt(ratio)))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    m = torch.zeros(n, 1, h, w, device=device)
    m[:, :, top:top + side_h, left:left + side_w] = 1
    return m


def random_box(n: int, size: tuple[int, int], ratio: float, generator=None, device=None) -> Tensor:
    h, w = size
    u = _rand((4, n), generator, device)
    aspect = torch.exp((u[0] * 2 - 1) * math.log(2))  # box height / width, log-uniform in [1/2, 2]
    area = ratio * h * w
    bh = torch.sqrt(area * aspect).round().clamp(1, h)
    bw = (area / bh).round().clamp(1, w)
    top = (u[1] * (h - bh + 1)).floor()
    left = (u[2] * (w - bw + 1)).floor()
    rows = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + bh).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + bw).view(n, 1, 1)))
    return inside.unsqueeze(1).float()


def free_form(n: int, size: tuple[int, int], ratio: float, generator=None, device=None, max_strokes: int = 10,
              vertices: int = 4, raster: int = 32) -> Tensor:
    h, w = size
    full = (h, w)
    if max(h, w) > raster:  # strokes are smooth and thick: drawn at <= raster px, then scaled up
        f = raster / max(h, w)
        h, w = max(1, round(h * f)), max(1, round(w * f))
    s, v = max_strokes, vertices
    scale = float(min(h, w))
    u = _rand((n, s, 2 * v + 3), generator, device)
    x0, y0 = u[..., 0] * w, u[..., 1] * h                                              # N x S start points
    angles = u[..., 2:3] * 2 * math.pi + torch.cumsum((u[..., 3:3 + v] - 0.5) * (math.pi / 2), -1)  # turns <= 45 deg
    lengths = (0.15 + 0.25 * u[..., 3 + v:3 + 2 * v]) * scale                          # segments 15-40% of the side
    radius2 = ((0.03 + 0.05 * u[..., -1]) * scale).square().unsqueeze(-1).unsqueeze(-1)  # brush 6-16% of the side
    xs = torch.cat([x0.unsqueeze(-1), x0.unsqueeze(-1) + torch.cumsum(torch.cos(angles) * lengths, -1)], -1)
    ys = torch.cat([y0.unsqueeze(-1), y0.unsqueeze(-1) + torch.cumsum(torch.sin(angles) * lengths, -1)], -1)
    ax, ay = xs[..., :-1].unsqueeze(-1), ys[..., :-1].unsqueeze(-1)                   # N x S x V x 1 segment starts
    abx, aby = xs[..., 1:].unsqueeze(-1) - ax, ys[..., 1:].unsqueeze(-1) - ay
    inv = 1.0 / (abx * abx + aby * aby).clamp_min(1e-6)
    py = (torch.arange(h, device=device, dtype=torch.float32) + 0.5).repeat_interleave(w)  # pixel centres, HW
    px = (torch.arange(w, device=device, dtype=torch.float32) + 0.5).repeat(h)
    covered = torch.zeros(n, h * w, dtype=torch.bool, device=device)
    best, best_err = covered, torch.full((n, 1), float("inf"), device=device)
    for j in range(s):  # stroke by stroke: the union of the first j + 1, kept where closest to the ratio
        dx, dy = px - ax[:, j], py - ay[:, j]                                            # N x V x HW
        t = ((dx * abx[:, j] + dy * aby[:, j]) * inv[:, j]).clamp_(0, 1)
        ex, ey = dx.sub_(t * abx[:, j]), dy.sub_(t * aby[:, j])
        covered = covered | (ex.square_().add_(ey.square_()) <= radius2[:, j]).any(1)
        err = (covered.float().mean(1, keepdim=True) - ratio).abs()
        closer = err < best_err
        best, best_err = torch.where(closer, covered, best), torch.where(closer, err, best_err)
    m = best.float().view(n, 1, h, w)
    if (h, w) != full:
        m = (torch.nn.functional.interpolate(m, size=full, mode="bilinear", align_corners=False) >= 0.5).float()
    return m


def draw(kind: str, n: int, size: tuple[int, int], ratio: float, generator: torch.Generator | None = None,
         device=None) -> Tensor:
    """n masks of `kind` (see the module docstring) for images of `size` (H, W), on `device`."""
    check(kind, ratio)
    if kind == "center":
        return center(n, size, ratio, device)
    if kind == "random_box":
        return random_box(n, size, ratio, generator, device)
    return free_form(n, size, ratio, generator, device)

"""Pictures for TensorBoard: sample grids for images, scatter plots for 2D points (no matplotlib)."""

from __future__ import annotations

import math

import torch


def make_grid(x: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """torchvision.utils.make_grid's layout (single-channel images repeated to 3 channels, `nrow` images a row,
    `padding` pixels of `pad_value` around each), without importing torchvision (about 2 s a process, most of
    a CLI call's start-up)."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.shape[1] == 1:
        x = torch.cat([x, x, x], 1)
    if x.shape[0] == 1:  # as torchvision: one image is returned as it is, unpadded
        return x[0]
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = int(math.ceil(n / cols))
    hp, wp = h + padding, w + padding
    grid = x.new_full((c, rows * hp + padding, cols * wp + padding), pad_value)
    for k in range(n):
        r, col = divmod(k, cols)
        grid[:, r * hp + padding:r * hp + padding + h, col * wp + padding:col * wp + padding + w].copy_(x[k])
    return grid


def save_png(grid: torch.Tensor, path) -> None:
    """A C x H x W grid in [0, 1] to an image file, rounded as torchvision's save_image rounds."""
    from PIL import Image

    arr = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()
    Image.fromarray(arr if arr.shape[2] == 3 else arr[:, :, 0]).save(path)


def image_grid(x: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """N x C x H x W in [-1, 1] -> one C x H' x W' float grid in [0, 1] (square-ish by default)."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    return make_grid(x, nrow=nrow or max(1, int(math.ceil(math.sqrt(len(x))))), padding=2, pad_value=1.0)


def scatter_image(points: torch.Tensor, modes: torch.Tensor, size: int = 320) -> torch.Tensor:
    """3 x size x size uint8: samples (blue dots) over the true modes (red crosses), on white.

    The view spans the modes plus a margin; samples outside it are drawn on the border in grey, so
    divergent samples stay visible. 1D points are drawn on the horizontal axis.
    """
    points, modes = points.detach().float().cpu(), modes.float().cpu()
    if points.shape[1] == 1:
        points, modes = (torch.cat([p, torch.zeros_like(p)], 1) for p in (points, modes))
    extent = float(modes.abs().max()) * 1.35 + 0.5
    img = torch.full((3, size, size), 255, dtype=torch.uint8)

    def to_pixels(p):
        u = ((p + extent) / (2 * extent) * (size - 1)).round().long()
        outside = (u < 0).any(1) | (u >= size).any(1)
        return u.clamp(0, size - 1), outside

    # light axes through the origin
    mid = size // 2
    img[:, mid, :] = 225
    img[:, :, mid] = 225
    u, outside = to_pixels(points)
    col, row = u[:, 0], size - 1 - u[:, 1]
    for dr in (0, 1):
        for dc in (0, 1):
            r, c = (row + dr).clamp(0, size - 1), (col + dc).clamp(0, size - 1)
            img[0, r, c] = torch.where(outside, 150, 30).to(torch.uint8)
            img[1, r, c] = torch.where(outside, 150, 80).to(torch.uint8)
            img[2, r, c] = torch.where(outside, 150, 220).to(torch.uint8)
    m, _ = to_pixels(modes)
    for k in range(-4, 5):
        for sign in (1, -1):
            r = (size - 1 - m[:, 1] + sign * k).clamp(0, size - 1)
            c = (m[:, 0] + k).clamp(0, size - 1)
            img[:, r, c] = torch.tensor([220, 20, 20], dtype=torch.uint8).view(3, 1)
    return img

"""Users' image files in and out, for the commands that process folders (`ganlab translate`, `ganlab inpaint`):
tensors 1 x C x H x W in [-1, 1], resizing to a model's resolution and back, names and sizes kept."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab.data.sources import IMAGE_KINDS, image_files
from ganlab.errors import GanlabError


def image_paths(src: Path, what: str = "in") -> list[Path]:
    """`src` itself when it is a file, else every image under it (recursively)."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise GanlabError(f"{what}={src}: no such folder or image.")
    files = image_files(src)
    if not files:
        raise GanlabError(f"{what}={src} holds no images ({IMAGE_KINDS}).")
    return files


def read_image(path: Path, mode: str) -> Tensor:
    """1 x C x H x W in [-1, 1]; `mode` L (grey) or RGB, converted from whatever the file holds."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.size[1], im.size[0], -1)
    except OSError as exc:
        raise GanlabError(f"{path} cannot be read as an image ({exc}); replace or remove it.") from None
    return x.permute(2, 0, 1)[None].float().div(127.5).sub(1)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased when shrinking: N x C x H x W to `size` (H, W)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def write_image(path: Path, x: Tensor, mode: str) -> None:
    """A 1 x C x H x W (or C x H x W) image in [-1, 1] to `path` (its suffix picks the format)."""
    from PIL import Image

    x = x[0] if x.dim() == 4 else x
    pixels = x.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)


def output_path(path: Path, src: Path, out: Path) -> Path:
    """Where `path` (found under `src`) goes under `out`: the same relative path and name."""
    return out / (path.relative_to(src) if src.is_dir() else path.name)




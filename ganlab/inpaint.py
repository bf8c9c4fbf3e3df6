"""`ganlab inpaint`: fill the holes of users' images with a trained model=inpaint run's G.

Each image is read (grey or RGB, as the model), its mask too (white = hole: pixels >= 128 after
conversion to grey; resized to the image's size if it differs), both are resized to the model's
resolution (a pixel of the small mask is a hole when any of its area is), G fills the hole there,
the fill is resized back to the image's size, and the result keeps every known pixel of the original
at full resolution: out = image (1 - mask) + fill mask. Names and relative paths are kept.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ganlab.checkpoint import checkpoint_path, load_checkpoint
from ganlab.device import resolve_device
from ganlab.errors import GanlabError
from ganlab.imageio import image_paths, output_path, read_image, resize, write_image
from ganlab.writeguard import check_out, check_targets, overwrite_flag
from ganlab.objectives.inpaint import composite, fill, load_filler


def read_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """1 x 1 x H x W, 1 in the hole (white in the file), at `size` (H, W)."""
    m = (read_image(path, "L") >= 0).float()  # [-1, 1]: pixel values >= 128 are white
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="nearest")
    return m


def _mask_for(image: Path, src: Path, masks: Path) -> Path:
    if masks.is_file():
        return masks
    rel = image.relative_to(src) if src.is_dir() else Path(image.name)
    found = [p for p in masks.glob(str(rel.with_suffix(".*"))) if p.is_file()]
    if not found:
        raise GanlabError(f"no mask for {image} in mask={masks} (looked for {masks / rel.with_suffix('.*')}); give one "
                          "mask per image with the same relative path and name (any image format), or one mask file.")
    return found[0]


def inpaint_run(cfg) -> Path:
    overwrite = overwrite_flag(cfg)
    src, masks = Path(str(cfg["in"])).expanduser(), Path(str(cfg.mask)).expanduser()
    out = check_out(Path(str(cfg.out)), {"run": Path(str(cfg.run)), "in": src, "mask": masks}, overwrite, "filled images")
    device = resolve_device(cfg.device)
    state = load_checkpoint(checkpoint_path(cfg.run, cfg.checkpoint))
    g = load_filler(state, bool(cfg.ema), device)
    ds = state["config"]["dataset"]
    resolution, mode = int(ds["resolution"]), ("L" if int(ds["channels"]) == 1 else "RGB")
    files = image_paths(src)
    if not masks.exists():
        raise GanlabError(f"mask={masks}: no such folder or image (white = hole, one per image or one for all).")
    pairs = [(path, _mask_for(path, src, masks)) for path in files]  # every mask found before anything is written
    check_targets([output_path(path, src, out) for path in files], overwrite, "filled images")
    holes = 0.0
    for path, mask_path in pairs:
        x = read_image(path, mode)
        size = tuple(x.shape[-2:])
        m = read_mask(mask_path, size)
        small_x = resize(x, (resolution, resolution))
        small_m = (F.adaptive_avg_pool2d(m, resolution) > 0).float() if size != (resolution, resolution) else m
        filled = fill(g, small_x, small_m)
        result = composite(x, resize(filled, size), m)
        write_image(output_path(path, src, out), result, mode)
        holes += float(m.mean())
    print(f"{len(files)} images filled by {state['config']['model']['name']} ({state['config']['model']['recipe']}) "
          f"step {state['step']}, holes {100 * holes / len(files):.1f}% of the pixels on average -> {out}")
    return out

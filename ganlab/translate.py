"""`ganlab translate`: a folder of images through a trained CycleGAN's generator, names and sizes kept."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ganlab.checkpoint import checkpoint_path, load_checkpoint
from ganlab.data.sources import IMAGE_KINDS, image_files
from ganlab.device import resolve_device
from ganlab.errors import GanlabError
from ganlab.models import cyclegan as cg
from ganlab.objectives.base import generator_weights


def load_translator(state: dict, direction: str, ema: bool = True, device="cpu") -> torch.nn.Module:
    """G_AB (direction a2b) or G_BA (b2a) of a cyclegan checkpoint, in eval mode; its config rebuilds it."""
    cfg = OmegaConf.create(state["config"])
    if cfg.model.get("objective") != "cyclegan":
        raise GanlabError(f"ganlab translate needs a model=cyclegan run; this one is model={cfg.model.name} "
                          "(use ganlab sample for it).")
    if direction not in ("a2b", "b2a"):
        raise GanlabError(f"direction={direction!r} is not valid: use a2b (A's images to B) or b2a.")
    ds = cfg.dataset
    g, _, _, _ = cg.build(cfg.model, (int(ds.channels), int(ds.resolution), int(ds.resolution)))
    name = "generator_ab" if direction == "a2b" else "generator_ba"
    g.load_state_dict(generator_weights({"generator": state[name], "generator_ema": state.get(f"{name}_ema")}, ema))
    return g.to(device).eval()


def _images(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise GanlabError(f"in={src}: no such folder or image.")
    files = image_files(src)
    if not files:
        raise GanlabError(f"in={src} holds no images ({IMAGE_KINDS}).")
    return files


def translate_run(cfg) -> Path:
    from PIL import Image

    device = resolve_device(cfg.device)
    state = load_checkpoint(checkpoint_path(cfg.run, cfg.checkpoint))
    g = load_translator(state, str(cfg.direction), bool(cfg.ema), device)
    ds = state["config"]["dataset"]
    resolution, mode = int(ds["resolution"]), ("L" if int(ds["channels"]) == 1 else "RGB")
    src, out = Path(str(cfg["in"])).expanduser(), Path(str(cfg.out)).expanduser()
    files = _images(src)
    if out.resolve() == (src if src.is_dir() else src.parent).resolve():
        raise GanlabError(f"out={out} is the input folder: the translations would overwrite the images; pick another.")
    batch = max(1, int(cfg.batch_size))
    for start in range(0, len(files), batch):
        chunk, sizes, xs = files[start:start + batch], [], []
        for path in chunk:
            with Image.open(path) as im:
                im = im.convert(mode)
                sizes.append(im.size)
                x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.size[1], im.size[0], -1)
            x = x.permute(2, 0, 1)[None].float().div(127.5).sub(1)
            xs.append(F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False))
        with torch.no_grad():
            y = g(torch.cat(xs).to(device)).float().cpu()
        for path, (w, h), img in zip(chunk, sizes, y):
            img = F.interpolate(img[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
            pixels = img.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
            target = out / (path.relative_to(src) if src.is_dir() else path.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(target)
    print(f"{len(files)} images translated {cfg.direction} by {state['config']['model']['name']} step {state['step']} "
          f"-> {out}")
    return out

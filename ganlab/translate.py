"""`ganlab translate`: a folder of images through a CycleGAN's or pix2pix's generator, names, sizes and aspect
ratios kept."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from ganlab.checkpoint import checkpoint_path, load_checkpoint
from ganlab.device import resolve_device
from ganlab.errors import GanlabError
from ganlab.imageio import image_paths, output_path, read_image, resize, write_image
from ganlab.models import cyclegan as cg
from ganlab.objectives.base import generator_weights
from ganlab.writeguard import check_out, check_targets, overwrite_flag

FITS = ("aspect", "square")


def fitted(x: torch.Tensor, resolution: int, multiple: int, fit: str) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(G's input, the padding (left, right, top, bottom) to crop off its output) for one 1 x C x H x W image:
    `square` squashes it to resolution x resolution; `aspect` scales its shorter side to `resolution`, the
    aspect ratio kept, and reflect-pads each side to a multiple of `multiple`."""
    if fit == "square":
        return resize(x, (resolution, resolution)), (0, 0, 0, 0)
    h, w = x.shape[-2:]
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    y = resize(x, size)
    ph, pw = (-size[0]) % multiple, (-size[1]) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (torch.nn.functional.pad(y, pad, mode="reflect") if any(pad) else y), pad


def unpadded(y: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    return y[..., top:y.shape[-2] - bottom, left:y.shape[-1] - right]


def load_translator(state: dict, direction: str, ema: bool = True, device="cpu") -> torch.nn.Module:
    """G_AB (direction a2b) or G_BA (b2a) of a cyclegan checkpoint, in eval mode; its config rebuilds it."""
    cfg = OmegaConf.create(state["config"])
    if cfg.model.get("objective") != "cyclegan":
        raise GanlabError(f"ganlab translate needs a model=cyclegan run (trained, or imported with ganlab import "
                          f"cyclegan / pix2pix); this one is model={cfg.model.name} (use ganlab sample for it).")
    if direction not in ("a2b", "b2a"):
        raise GanlabError(f"direction={direction!r} is not valid: use a2b (A's images to B) or b2a.")
    ds = cfg.dataset
    g, _, _, _ = cg.build(cfg.model, (int(ds.channels), int(ds.resolution), int(ds.resolution)))
    name = "generator_ab" if direction == "a2b" else "generator_ba"
    imported = state.get("imported") or {}
    if imported and name not in imported.get("nets", [name]):
        raise GanlabError(f"this run was imported from {imported.get('from')} alone: it has no {direction} generator; "
                          "import the other direction too (ganlab import cyclegan G_A.pth b2a=G_B.pth out=...).")
    g.load_state_dict(generator_weights({"generator": state[name], "generator_ema": state.get(f"{name}_ema")}, ema))
    return g.to(device).eval()


def translate_run(cfg) -> Path:
    overwrite = overwrite_flag(cfg)
    src, out = Path(str(cfg["in"])).expanduser(), Path(str(cfg.out)).expanduser()
    check_out(out, {"run": Path(str(cfg.run)), "in": src}, overwrite, "translations")
    device = resolve_device(cfg.device)
    state = load_checkpoint(checkpoint_path(cfg.run, cfg.checkpoint))
    g = load_translator(state, str(cfg.direction), bool(cfg.ema), device)
    ds = state["config"]["dataset"]
    resolution, mode = int(ds["resolution"]), ("L" if int(ds["channels"]) == 1 else "RGB")
    fit = str(cfg.get("fit", "aspect"))
    if fit not in FITS:
        raise GanlabError(f"fit={fit!r} is not valid: use aspect (aspect ratio kept) or square (squashed).")
    multiple = cg.size_multiple(OmegaConf.create(state["config"]).model)
    files = image_paths(src)
    check_targets([output_path(path, src, out) for path in files], overwrite, "translations")
    batch = max(1, int(cfg.batch_size))
    for start in range(0, len(files), batch):
        chunk = [(path, read_image(path, mode)) for path in files[start:start + batch]]
        inputs = [fitted(x, resolution, multiple, fit) for _, x in chunk]
        for shape in dict.fromkeys(tuple(i.shape) for i, _ in inputs):  # one forward per padded size
            same = [n for n, (i, _) in enumerate(inputs) if tuple(i.shape) == shape]
            with torch.no_grad():
                y = g(torch.cat([inputs[n][0] for n in same]).to(device)).float().cpu()
            for n, img in zip(same, y):
                path, x = chunk[n]
                write_image(output_path(path, src, out), resize(unpadded(img[None], inputs[n][1]),
                                                                tuple(x.shape[-2:])), mode)
    print(f"{len(files)} images translated {cfg.direction} by {state['config']['model']['name']} step {state['step']} "
          f"-> {out}")
    return out

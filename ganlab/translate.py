"""`ganlab translate`: a folder of images through a trained CycleGAN's generator, names and sizes kept."""

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
    files = image_paths(src)
    check_targets([output_path(path, src, out) for path in files], overwrite, "translations")
    batch = max(1, int(cfg.batch_size))
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        xs = [read_image(path, mode) for path in chunk]
        with torch.no_grad():
            y = g(torch.cat([resize(x, (resolution, resolution)) for x in xs]).to(device)).float().cpu()
        for path, x, img in zip(chunk, xs, y):
            write_image(output_path(path, src, out), resize(img[None], tuple(x.shape[-2:])), mode)
    print(f"{len(files)} images translated {cfg.direction} by {state['config']['model']['name']} step {state['step']} "
          f"-> {out}")
    return out

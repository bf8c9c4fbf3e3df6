"""`ganlab import cyclegan G_A.pth [b2a=G_B.pth] out=RUN_DIR` and `ganlab import pix2pix G.pth out=RUN_DIR`:
the generators of the official pytorch-CycleGAN-and-pix2pix code.

Their checkpoints (`latest_net_G_A.pth`, `latest_net_G_B.pth`, `latest_net_G.pth`, the published
`horse2zebra.pth`, `facades_label2photo.pth`, ...) are state dicts, read here with torch's weights-only loader,
of a `ResnetGenerator` (`resnet_6blocks` / `resnet_9blocks`: CycleGAN's default) or a `UnetGenerator`
(`unet_128` / `unet_256`: pix2pix's default). The architecture is read from the keys and shapes: which of the
two, the width (ngf) from the first convolution, the channels from the first and last, the residual blocks
from the `model.<i>.conv_block` entries or the U-Net's depth from how deep its blocks nest, the norm from
whether the norm layers have affine weights (batch norm: pix2pix's `--norm batch`) or not (instance norm),
dropout in the residual blocks from where their second convolution sits (a U-Net's dropout has no weights:
pix2pix's default, on, is assumed; eval mode does not use it). ResNet keys map onto ganlab's ResNet G as they
are (`model.<i>` -> `net.<i>`, `conv_block` -> `body`); the U-Net's nested blocks map onto ganlab's flat one
(ganlab.models.unet). Instance norm's running statistics, which older checkpoints carry (`running_mean`,
`running_var`, `num_batches_tracked`), are dropped, as the official loader drops them; batch norm's are kept
(eval mode uses them).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ganlab.errors import GanlabError
from ganlab.safeload import load_torch

WHAT = "a pytorch-CycleGAN-and-pix2pix generator state dict (ResnetGenerator or UnetGenerator)"
FIX = ("Give a generator checkpoint of the official code (latest_net_G_A.pth / latest_net_G_B.pth of CycleGAN, "
       "latest_net_G.pth of pix2pix, or a published one); discriminators (net_D) are not imported.")
_STATS = ("running_mean", "running_var", "num_batches_tracked")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = load_torch(path, WHAT, FIX)  # no code runs: torch's weights-only unpickler
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and torch.is_tensor(v)
                                                           for k, v in state.items()):
        raise GanlabError(f"{path} is not {WHAT} (not a flat dict of tensors). {FIX}")
    prefix = "module." if all(k.startswith("module.") for k in state) else ""  # saved from DataParallel
    state = {k[len(prefix):]: v for k, v in state.items()}
    # running statistics of a layer without an affine weight: an instance norm's, which the official code drops
    return {k: v for k, v in state.items()
            if k.rsplit(".", 1)[-1] not in _STATS or f"{k.rsplit('.', 1)[0]}.weight" in state}


def _norm(state: dict, key: str) -> str:
    """batch when the norm layer at `key` has an affine weight (the official batch norm), else instance."""
    return "batch" if key + ".weight" in state and state[key + ".weight"].dim() == 1 else "instance"


def resnet_geometry(state: dict, path: Path) -> dict:
    """(channels, width, blocks, norm, dropout) of a ResnetGenerator from its keys and shapes, or one clear error."""
    try:
        first = state["model.1.weight"]
        blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
        convs = sorted(int(m.group(1)) for k in state
                       if (m := re.match(r"model\.(\d+)\.weight$", k)) and state[k].dim() == 4)
        last = state[f"model.{convs[-1]}.weight"]
    except (KeyError, IndexError):
        raise GanlabError(f"{path} is not {WHAT}: it lacks the keys of one (model.1.weight and model.<i>.conv_block... "
                          "of a ResNet G, model.model.0.weight of a U-Net). " + FIX) from None
    if first.dim() != 4 or first.shape[-1] != 7 or last.shape[-1] != 7 or blocks != list(range(10, 10 + len(blocks))):
        raise GanlabError(f"{path} is not {WHAT}: its layers are not a ResnetGenerator's (7x7 convolutions at both "
                          f"ends, residual blocks from model.10 on). {FIX}")
    # [pad, conv, norm, ReLU, (dropout), pad, conv, norm]: entry 6 is the second conv with dropout, else a norm
    second = state.get(f"model.{blocks[0]}.conv_block.6.weight") if blocks else None
    dropout = second is not None and second.dim() == 4
    if first.shape[1] != last.shape[0]:
        raise GanlabError(f"{path}: a generator from {first.shape[1]} to {last.shape[0]} channels; ganlab translates "
                          "between domains with the same channels.")
    return {"generator": "resnet", "channels": int(first.shape[1]), "width": int(first.shape[0]),
            "blocks": len(blocks), "norm": _norm(state, "model.2"), "dropout": dropout}


def _unet_levels(state: dict) -> list[str]:
    """The key prefix of each nested UnetSkipConnectionBlock's Sequential, outermost first."""
    prefixes, prefix = [], "model.model."
    while f"{prefix}1.weight" in state or f"{prefix}0.weight" in state:
        prefixes.append(prefix)
        inner = prefix + ("1.model." if len(prefixes) == 1 else "3.model.")
        if not any(k.startswith(inner) for k in state):
            break
        prefix = inner
    return prefixes


def unet_geometry(state: dict, path: Path) -> dict:
    levels = _unet_levels(state)
    try:
        first, last = state["model.model.0.weight"], state["model.model.3.weight"]
        innermost_up = state[levels[-1] + "3.weight"]
    except (KeyError, IndexError):
        raise GanlabError(f"{path} is not {WHAT}: its U-Net blocks are incomplete. {FIX}") from None
    if len(levels) < 5 or first.shape[-1] != 4 or innermost_up.dim() != 4:
        raise GanlabError(f"{path} is not {WHAT}: {len(levels)} nested U-Net levels (unet_128 has 7, unet_256 8). {FIX}")
    if first.shape[1] != last.shape[1]:
        raise GanlabError(f"{path}: a generator from {first.shape[1]} to {last.shape[1]} channels; ganlab translates "
                          "between domains with the same channels.")
    return {"generator": "unet", "channels": int(first.shape[1]), "width": int(first.shape[0]),
            "downs": len(levels), "norm": _norm(state, levels[1] + "2"), "dropout": True}


def geometry(state: dict, path: Path) -> dict:
    return unet_geometry(state, path) if "model.model.0.weight" in state else resnet_geometry(state, path)


def _unet_to_ganlab(state: dict, geo: dict) -> dict[str, torch.Tensor]:
    levels, downs, out = _unet_levels(state), geo["downs"], {}
    for k, prefix in enumerate(levels):
        up = f"up.{downs - 1 - k}."
        if k == 0:
            moves = {"0": "down.0.0", "3": up + "1"}
        elif k == downs - 1:
            moves = {"1": f"down.{k}.1", "3": up + "1", "4": up + "2"}
        else:
            moves = {"1": f"down.{k}.1", "2": f"down.{k}.2", "5": up + "1", "6": up + "2"}
        for key, value in state.items():
            rest = key[len(prefix):] if key.startswith(prefix) else None
            if rest is not None and rest.split(".", 1)[0] in moves:  # a nested block's keys sit under 1 or 3.model
                index, param = rest.split(".", 1)
                out[f"{moves[index]}.{param}"] = value.detach().clone()
    if len(out) != len(state):
        left = sorted(set(state) - {k for k in state if any(k.startswith(p) for p in levels)})[:3]
        raise GanlabError(f"{len(state) - len(out)} of the U-Net's entries have no place in its layout ({left}...). "
                          + FIX)
    return out


def to_ganlab(state: dict, geo: dict) -> dict[str, torch.Tensor]:
    """The official keys as ganlab's generator names them."""
    if geo["generator"] == "unet":
        return _unet_to_ganlab(state, geo)
    return {"net." + key[len("model."):].replace("conv_block.", "body."): value.detach().clone()
            for key, value in state.items()}


def model_overrides(geo: dict) -> list[str]:
    overrides = ["model=cyclegan", f"model.generator={geo['generator']}", f"model.width={geo['width']}",
                 f"model.norm={geo['norm']}", f"model.g_dropout={str(geo['dropout']).lower()}"]
    if geo["generator"] == "unet":
        return overrides + [f"model.unet_downs={geo['downs']}"]
    return overrides + [f"model.blocks={geo['blocks']}"]


def import_translation(kind: str, path: Path, b2a: Path | None, extra: list[str]) -> tuple[list[str], dict]:
    """(the ganlab overrides of the run, its nets) for `ganlab import cyclegan` / `ganlab import pix2pix`."""
    a2b_state = read_state_dict(path)
    geo = geometry(a2b_state, path)
    nets = {"generator_ab": to_ganlab(a2b_state, geo)}
    if b2a is not None:
        if not b2a.is_file():
            raise GanlabError(f"b2a={b2a}: no such file.")
        b2a_state = read_state_dict(b2a)
        geo_b = geometry(b2a_state, b2a)
        if geo_b != geo:
            raise GanlabError(f"{path} and b2a={b2a} are generators of different shapes ({geo} vs {geo_b}).")
        nets["generator_ba"] = to_ganlab(b2a_state, geo_b)
    overrides = model_overrides(geo)
    given = {o.split("=", 1)[0] for o in extra}
    if not any(k == "dataset" or k.startswith("dataset.") for k in given):
        # the official models are trained at 256 px (load 286, crop 256): images of that size, nothing to read
        overrides += ["dataset=generated", "dataset.resolution=256", f"dataset.channels={geo['channels']}"]
    return overrides, nets

"""`ganlab import cyclegan G_A.pth [b2a=G_B.pth] out=RUN_DIR`: the official pytorch-CycleGAN-and-pix2pix generators.

Their checkpoints (`latest_net_G_A.pth`, `latest_net_G_B.pth`, the published `horse2zebra.pth`, ...) are state
dicts of `ResnetGenerator`s (`resnet_6blocks` / `resnet_9blocks`), read here with torch's weights-only loader. The
architecture is read from the keys and shapes: the width (ngf) from the first convolution, the channels from the
first and last, the number of residual blocks from the `model.<i>.conv_block` entries, dropout inside the blocks
from where their second convolution sits. The keys map onto ganlab's CycleGAN generator (`model.<i>` ->
`net.<i>`, `conv_block` -> `body`); the InstanceNorm running statistics that older checkpoints carry
(`running_mean`, `running_var`, `num_batches_tracked`) are dropped, as the official loader drops them for its
InstanceNorm without running statistics (instance statistics in eval mode too).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ganlab.errors import GanlabError
from ganlab.safeload import load_torch

WHAT = "a pytorch-CycleGAN-and-pix2pix ResnetGenerator state dict"
FIX = "Give a generator checkpoint of the official code (latest_net_G_A.pth, latest_net_G_B.pth, or a published one)."
_STATS = ("running_mean", "running_var", "num_batches_tracked")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = load_torch(path, WHAT, FIX)  # no code runs: torch's weights-only unpickler
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and torch.is_tensor(v)
                                                           for k, v in state.items()):
        raise GanlabError(f"{path} is not {WHAT} (not a flat dict of tensors). {FIX}")
    prefix = "module." if all(k.startswith("module.") for k in state) else ""  # saved from DataParallel
    return {k[len(prefix):]: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in _STATS}


def resnet_geometry(state: dict, path: Path) -> dict:
    """(channels, width, blocks, dropout) of a ResnetGenerator from its keys and shapes, or one clear error."""
    try:
        first, last = state["model.1.weight"], None
        blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
        convs = sorted(int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.weight$", k)))
        last = state[f"model.{convs[-1]}.weight"]
    except (KeyError, IndexError):
        raise GanlabError(f"{path} is not {WHAT}: it lacks the keys of one (model.1.weight, model.<i>.conv_block...; "
                          "a UnetGenerator is imported with ganlab import pix2pix). " + FIX) from None
    if first.dim() != 4 or first.shape[-1] != 7 or last.shape[-1] != 7 or blocks != list(range(10, 10 + len(blocks))):
        raise GanlabError(f"{path} is not {WHAT}: its layers are not a ResnetGenerator's (7x7 convolutions at both "
                          f"ends, residual blocks from model.10 on). {FIX}")
    dropout = f"model.{blocks[0]}.conv_block.6.weight" in state if blocks else False
    if first.shape[1] != last.shape[0]:
        raise GanlabError(f"{path}: a generator from {first.shape[1]} to {last.shape[0]} channels; ganlab's CycleGAN "
                          "translates between domains with the same channels.")
    return {"channels": int(first.shape[1]), "width": int(first.shape[0]), "blocks": len(blocks), "dropout": dropout}


def to_ganlab(state: dict, geometry: dict) -> dict[str, torch.Tensor]:
    """The official keys as ganlab's ResnetGenerator names them."""
    out = {}
    for key, value in state.items():
        key = "net." + key[len("model."):]
        if geometry["dropout"]:  # [pad, conv, norm, relu, dropout, pad, conv, norm]: ganlab's block has no dropout
            key = re.sub(r"conv_block\.6\.", "body.5.", key)
        out[key.replace("conv_block.", "body.")] = value.detach().clone()
    return out


def import_translation(kind: str, path: Path, b2a: Path | None, extra: list[str]) -> tuple[list[str], dict]:
    """(the ganlab overrides of the run, its nets) for `ganlab import cyclegan`."""
    a2b_state = read_state_dict(path)
    geo = resnet_geometry(a2b_state, path)
    nets = {"generator_ab": to_ganlab(a2b_state, geo)}
    if b2a is not None:
        if not b2a.is_file():
            raise GanlabError(f"b2a={b2a}: no such file.")
        b2a_state = read_state_dict(b2a)
        geo_b = resnet_geometry(b2a_state, b2a)
        if geo_b != geo:
            raise GanlabError(f"{path} and b2a={b2a} are generators of different shapes ({geo} vs {geo_b}).")
        nets["generator_ba"] = to_ganlab(b2a_state, geo_b)
    overrides = ["model=cyclegan", f"model.width={geo['width']}", f"model.blocks={geo['blocks']}"]
    given = {o.split("=", 1)[0] for o in extra}
    if not any(k == "dataset" or k.startswith("dataset.") for k in given):
        # the official models are trained at 256 px (load 286, crop 256): images of that size, nothing to read
        overrides += ["dataset=generated", "dataset.resolution=256", f"dataset.channels={geo['channels']}"]
    return overrides, nets

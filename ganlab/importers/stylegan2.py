"""`ganlab import stylegan2 PKL out=RUN_DIR`: an official stylegan2-ada-pytorch network pickle as a ganlab run.

The official pickles hold `G`, `D`, `G_ema` (and `augment_pipe`, `training_set_kwargs`) as instances of
"persistent classes": each is pickled as a call of `torch_utils.persistence._reconstruct_persistent_obj(meta)`,
where `meta` carries the Python source of the module that defined the class (`module_src`, which the official
loader executes), the class name and the object's state (its `__dict__`: parameters, buffers, submodules, the
constructor's keyword arguments). ganlab imports none of that code and runs none of it: the unpickler maps
that one function to a record of (class name, state), ignoring the source; tensors are rebuilt by torch's
own functions, their storages read with torch's weights-only loader; plain containers, numpy scalars and
`dnnlib.util.EasyDict` (a dict) are allowed, and any other global is refused with one clear error. The
records' parameters and buffers become state dicts whose keys are exactly those of ganlab's StyleGAN2
(ganlab.models.stylegan mirrors the official layout), and the constructor arguments become ganlab's config.
"""

from __future__ import annotations

import collections
import io
from pathlib import Path

import numpy as np
import torch

from ganlab.errors import GanlabError
from ganlab.safeload import TRUST_DOC, load_pickle, numpy_arrays

WHAT = "an official stylegan2-ada-pytorch network pickle"
FIX = ("Give a network pickle written by stylegan2-ada-pytorch's training loop (network-snapshot-*.pkl, or the "
       "published ones such as ffhq.pkl, cifar10.pkl).")


class Record:
    """A persistent object of the pickle: its class name and its state, never its code."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __repr__(self) -> str:
        return f"Record({self.class_name})"


class _EasyDict(dict):
    """dnnlib.util.EasyDict's data (a dict with attribute access): what ganlab reads of it is its items."""


def _reconstruct_persistent_obj(meta) -> Record:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise GanlabError(f"a persistent object of an unknown kind ({type(meta).__name__}); {FIX}")
    return Record(meta["class_name"], dict(meta.get("state") or {}))  # meta["module_src"] is never looked at


def _storage_from_bytes(data: bytes):
    """A storage as the pickle keeps it (torch.save'd bytes), read with torch's weights-only loader."""
    return torch.load(io.BytesIO(data), weights_only=True)


def allowed_globals() -> dict:
    allowed = dict(numpy_arrays())
    allowed.update({
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    })
    for name in ("float32", "float16", "float64", "int64", "int32", "uint8", "bool"):
        allowed[("torch", name)] = getattr(torch, name)
    return allowed


def read_pickle(path: Path) -> dict:
    """The pickle's top-level dict with G, D, G_ema as Records; refused globals end in one GanlabError."""
    data = load_pickle(path, allowed_globals(), WHAT, FIX)
    if not isinstance(data, dict) or not isinstance(data.get("G_ema", data.get("G")), Record):
        raise GanlabError(f"{path} is not {WHAT} (no G or G_ema network in it; a TensorFlow-era .pkl needs the "
                          f"official legacy converter first). {FIX}")
    return data


def state_dict(record: Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a Record tree, by the dotted names nn.Module.state_dict gives."""
    if not isinstance(record, Record):
        raise GanlabError(f"{prefix or 'the network'} is a {type(record).__name__}, not a network of the pickle. {FIX}")
    st = record.state
    out = {}
    for name, value in (st.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = torch.as_tensor(value).detach().clone()
    skip = set(st.get("_non_persistent_buffers_set") or ())
    for name, value in (st.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = torch.as_tensor(value).detach().clone()
    for name, child in (st.get("_modules") or {}).items():
        if child is not None:
            out.update(state_dict(child, f"{prefix}{name}."))
    return out


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def init_kwargs(record: Record) -> dict:
    return _plain(dict(record.state.get("_init_kwargs") or {}))


def _refuse_unsupported(what: str, kwargs: dict, supported: dict) -> None:
    """Constructor arguments ganlab's networks do not take (or take only at their default)."""
    for key, value in kwargs.items():
        if key not in supported:
            raise GanlabError(f"the pickle's {what} was built with {key}={value!r}, which ganlab's StyleGAN2 does not "
                              f"implement; only {', '.join(sorted(supported))} are mapped.")
        default = supported[key]
        if default is not ... and value != default:
            raise GanlabError(f"the pickle's {what} was built with {key}={value!r}; ganlab's StyleGAN2 implements "
                              f"{key}={default!r} only.")


def model_overrides(g: dict, d: dict) -> list[str]:
    """ganlab's `model.*` overrides (and the dataset's shape) that rebuild these official networks."""
    mapping, synthesis = dict(g.get("mapping_kwargs") or {}), dict(g.get("synthesis_kwargs") or {})
    _refuse_unsupported("G", {k: v for k, v in g.items() if k not in ("mapping_kwargs", "synthesis_kwargs")},
                        {"z_dim": ..., "c_dim": ..., "w_dim": ..., "img_resolution": ..., "img_channels": ...})
    _refuse_unsupported("G's mapping network", mapping, {"num_layers": ..., "lr_multiplier": ..., "w_avg_beta": ...,
                                                          "embed_features": None, "layer_features": None,
                                                          "activation": "lrelu"})
    _refuse_unsupported("G's synthesis network", synthesis, {
        "channel_base": ..., "channel_max": ..., "num_fp16_res": ..., "conv_clamp": ..., "architecture": ...,
        "resample_filter": [1, 3, 3, 1], "use_noise": True, "activation": "lrelu", "kernel_size": 3,
        "fp16_channels_last": ...})
    block, epilogue = dict(d.get("block_kwargs") or {}), dict(d.get("epilogue_kwargs") or {})
    _refuse_unsupported("D", {k: v for k, v in d.items() if k not in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs")},
                        {"c_dim": ..., "img_resolution": ..., "img_channels": ..., "architecture": ...,
                         "channel_base": ..., "channel_max": ..., "num_fp16_res": ..., "conv_clamp": ..., "cmap_dim": None})
    _refuse_unsupported("D's blocks", block, {"activation": "lrelu", "resample_filter": [1, 3, 3, 1], "freeze_layers": ...,
                                              "fp16_channels_last": ...})
    _refuse_unsupported("D's epilogue", epilogue, {"mbstd_group_size": ..., "mbstd_num_channels": ...,
                                                   "activation": "lrelu"})
    base, cmax = synthesis.get("channel_base", 32768), synthesis.get("channel_max", 512)
    if d and (d.get("channel_base", 32768), d.get("channel_max", 512)) != (base, cmax):
        raise GanlabError(f"the pickle's G and D have different widths (G: {base}/{cmax}, D: {d.get('channel_base')}/"
                          f"{d.get('channel_max')}); ganlab's StyleGAN2 gives both the same model.channel_base/max.")
    if d and (d.get("img_resolution"), d.get("img_channels"), d.get("c_dim", 0)) != \
            (g["img_resolution"], g["img_channels"], g.get("c_dim", 0)):
        raise GanlabError("the pickle's G and D disagree on the resolution, channels or classes. " + FIX)
    clamp = synthesis.get("conv_clamp")
    group = epilogue.get("mbstd_group_size", 4)
    mbstd_channels = epilogue.get("mbstd_num_channels", 1)
    out = [f"model.z_dim={g['z_dim']}", f"model.w_dim={g['w_dim']}",
           f"model.mapping_layers={mapping.get('num_layers', 8)}",
           f"model.mapping_lr_mul={mapping.get('lr_multiplier', 0.01)}",
           f"model.w_avg_beta={mapping.get('w_avg_beta', 0.995)}",
           f"model.channel_base={base}", f"model.channel_max={cmax}",
           f"model.conv_clamp={'null' if clamp is None else clamp}",
           f"model.g_architecture={synthesis.get('architecture', 'skip')}",
           f"model.d_architecture={d.get('architecture', 'resnet') if d else 'resnet'}",
           f"model.minibatch_stddev={0 if group is None or not mbstd_channels else group}",
           f"model.mbstd_num_channels={mbstd_channels or 1}",
           f"model.d_mapping_layers={dict(d.get('mapping_kwargs') or {}).get('num_layers', 8) if d else 8}",
           f"model.conditional={'true' if g.get('c_dim', 0) else 'false'}"]
    if group is None:
        raise GanlabError("the pickle's D takes its minibatch stddev over the whole batch (mbstd_group_size=None); "
                          "ganlab's takes groups: not mapped.")
    return out


def dataset_overrides(g: dict) -> list[str]:
    """The default dataset of an imported run: generated images of the network's size, channels and classes
    (nothing to read; `dataset=NAME dataset.root=DIR` at import time names the data to fine-tune on)."""
    out = ["dataset=generated", f"dataset.resolution={g['img_resolution']}", f"dataset.channels={g['img_channels']}"]
    if g.get("c_dim"):
        out.append(f"dataset.num_classes={g['c_dim']}")
    return out


def import_stylegan2(path: Path, extra: list[str]) -> tuple[list[str], dict]:
    """(the ganlab overrides of the run, its checkpoint's nets) from an official pickle at `path`."""
    data = read_pickle(path)
    g_rec = data.get("G") if isinstance(data.get("G"), Record) else data["G_ema"]
    d_rec = data.get("D") if isinstance(data.get("D"), Record) else None
    g_kw, d_kw = init_kwargs(g_rec), init_kwargs(d_rec) if d_rec is not None else {}
    for key in ("z_dim", "w_dim", "img_resolution", "img_channels"):
        if key not in g_kw:
            raise GanlabError(f"{path}: G's constructor arguments lack {key}; {FIX}")
    overrides = ["model=stylegan", *model_overrides(g_kw, d_kw)]
    given = {o.split("=", 1)[0] for o in extra}
    if not any(k == "dataset" or k.startswith("dataset.") for k in given):
        overrides += dataset_overrides(g_kw)
    nets = {"generator": state_dict(g_rec)}
    if isinstance(data.get("G_ema"), Record):
        nets["generator_ema"] = state_dict(data["G_ema"])
    if d_rec is not None:
        nets["discriminator"] = state_dict(d_rec)
    return overrides, nets


__all__ = ["import_stylegan2", "read_pickle", "state_dict", "TRUST_DOC"]

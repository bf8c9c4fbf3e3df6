"""`ganlab import KIND FILE [b2a=FILE] out=RUN_DIR [overrides]`: official pretrained networks as ganlab run dirs.

Kinds: `stylegan2` (a stylegan2-ada-pytorch network pickle), `cyclegan` (a pytorch-CycleGAN-and-pix2pix
generator state dict: `latest_net_G_A.pth`, with `b2a=latest_net_G_B.pth` for the other direction), `pix2pix`
(the same code's `latest_net_G.pth`: one direction, a2b). Nothing in the files runs (ganlab.safeload). The run dir holds
checkpoints/last.pt (the networks, step 0, the ganlab config that rebuilds them, `imported`: where from) and
.hydra/overrides.yaml, so that `ganlab sample`, `eval`, `interpolate`, `translate` use it, and
`ganlab train resume=RUN_DIR train.steps=N` fine-tunes it (fresh optimizers from the imported weights).
Further `key=value` overrides (e.g. `dataset=cifar10 dataset.root=DIR` to fine-tune on real data) go into
the run's config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from ganlab.errors import GanlabError
from ganlab.safeload import file_sha256

USAGE = ("usage: ganlab import stylegan2 NETWORK.pkl out=RUN_DIR | ganlab import cyclegan G_A.pth [b2a=G_B.pth] "
         "out=RUN_DIR | ganlab import pix2pix G.pth out=RUN_DIR  [overwrite=true] [dataset=NAME ...]")
KINDS = ("stylegan2", "cyclegan", "pix2pix")


def _parse(args: list[str]) -> tuple[str, Path, dict, list[str]]:
    if len(args) < 2 or args[0] not in KINDS or "=" in args[1]:
        raise GanlabError(USAGE)
    kind, path = args[0], Path(args[1]).expanduser()
    if not path.is_file():
        raise GanlabError(f"{path}: no such file. {USAGE}")
    own, extra = {}, []
    for arg in args[2:]:
        key, sep, value = arg.partition("=")
        if not sep:
            raise GanlabError(f"{arg!r} is not key=value. {USAGE}")
        if key in ("out", "overwrite", "b2a", "device"):
            own[key] = value
        else:
            extra.append(arg)
    if "out" not in own:
        raise GanlabError(f"say where the run dir goes: out=RUN_DIR. {USAGE}")
    if "b2a" in own and kind != "cyclegan":
        raise GanlabError(f"b2a= is the second generator of a cyclegan import, not of {kind}. {USAGE}")
    if own.get("overwrite", "false") not in ("true", "false"):
        raise GanlabError(f"overwrite={own['overwrite']!r} is not valid: use true or false.")
    return kind, path, own, extra


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ganlab.config import config_dir, validate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    except Exception as exc:  # a bad override of the user's: Hydra's own sentence
        raise GanlabError(f"the run's config does not compose ({str(exc).splitlines()[0]}).") from None
    validate(cfg)
    return cfg


def _checkpoint(cfg, nets: dict, imported: dict) -> dict:
    """The run's step-0 checkpoint: the imported weights loaded (strictly) into the family's own networks, so a
    mismatch is found here, not at sampling time."""
    from ganlab.data.sources import build_source
    from ganlab.objectives import build_objective

    source = build_source(cfg.dataset)  # reads no data
    obj = build_objective(cfg, source, torch.device("cpu"))
    state = {}
    for name, weights in nets.items():
        base = name[:-4] if name.endswith("_ema") else name
        if base not in obj.nets:
            continue
        target = obj.ema[base].module if name.endswith("_ema") and base in obj.ema else obj.nets[base]
        try:
            target.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise GanlabError(f"{imported['from']}: its {base} does not fit ganlab's ({str(exc).splitlines()[0][:300]}). "
                              "The file may be of another architecture than its keys suggest.") from None
        state[name] = target.state_dict()
    for base in obj.nets:  # a network the file lacks (an official pickle without D): ganlab's initialization
        state.setdefault(base, obj.nets[base].state_dict())
    state.update(step=0, config=OmegaConf.to_container(cfg, resolve=True), imported=imported)
    return state


def import_cli(args: list[str]) -> int:
    from ganlab.checkpoint import save_checkpoint
    from ganlab.writeguard import check_out, check_targets

    kind, path, own, extra = _parse(args)
    overwrite = own.get("overwrite") == "true"
    out = check_out(Path(own["out"]), {"file": path, **({"b2a": Path(own["b2a"])} if "b2a" in own else {})},
                    overwrite, "imported run")
    if (out / "checkpoints" / "last.pt").exists():
        raise GanlabError(f"{out} already holds a run (checkpoints/last.pt); import into a new out= (a run dir that "
                          "holds a checkpoint is never overwritten).")
    targets = [out / ".hydra" / "overrides.yaml", out / ".hydra" / "config.yaml"]
    check_targets(targets, overwrite, "imported run's files")
    if kind == "stylegan2":
        from ganlab.importers.stylegan2 import import_stylegan2

        overrides, nets = import_stylegan2(path, extra)
        what = "stylegan2-ada-pytorch network pickle"
    else:
        from ganlab.importers.cyclegan import import_translation

        overrides, nets = import_translation(kind, path, Path(own["b2a"]) if "b2a" in own else None, extra)
        what = f"pytorch-CycleGAN-and-pix2pix {kind} generator state dict"
    overrides = [*overrides, *extra]
    cfg = _compose(overrides)
    imported = {"format": what, "from": str(path.resolve()), "sha256": file_sha256(path), "nets": sorted(nets)}
    if "b2a" in own:
        imported.update(b2a=str(Path(own["b2a"]).resolve()), b2a_sha256=file_sha256(Path(own["b2a"])))
    state = _checkpoint(cfg, nets, imported)
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    targets[0].write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    targets[1].write_text(OmegaConf.to_yaml(cfg))
    save_checkpoint(state, out / "checkpoints" / "last.pt")
    print(f"imported {path.name} ({what}) as a ganlab {cfg.model.name} run: {out}\n"
          f"  model: {' '.join(o for o in overrides if o.startswith('model'))}\n"
          f"  sample: ganlab sample run={out} n=16 out=samples.npz\n"
          f"  fine-tune: ganlab train resume={out} train.steps=N (fresh optimizers from these weights)")
    return 0

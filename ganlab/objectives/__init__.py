"""Objectives: what a training step is, one file per family (see `base.py` for the contract).

A model family picks its objective with `model.objective` (conf/model/*.yaml): a name registered
here, or a dotted path `package.module.Class` to an Objective of your own.
"""

from __future__ import annotations

import importlib

from omegaconf import OmegaConf

from ganlab.errors import GanlabError
from ganlab.objectives.base import Objective, Phase, Runtime

OBJECTIVES = {
    "adversarial": "ganlab.objectives.adversarial.Adversarial",
    "progressive": "ganlab.objectives.progressive.Progressive",
    "stylegan": "ganlab.objectives.stylegan.StyleGAN",
    "lapgan": "ganlab.objectives.lapgan.LapGAN",
    "cyclegan": "ganlab.objectives.cyclegan.CycleGAN",
    "inpaint": "ganlab.objectives.inpaint.Inpaint",
    "optimal_d": "ganlab.objectives.optimal_d.OptimalD",
}
DEFAULT = "adversarial"  # checkpoints written before objectives existed hold no model.objective


def objective_class(name: str) -> type[Objective]:
    target = OBJECTIVES.get(name, name)
    module, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr, None) if module else None
    except ModuleNotFoundError as exc:
        if not (exc.name and module.startswith(exc.name)):
            raise  # the module exists but something it imports does not: that error is the one to see
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise GanlabError(f"model.objective={name!r} is unknown: use one of {', '.join(OBJECTIVES)}, or the dotted "
                          "path of an Objective subclass (package.module.Class) that Python can import.")
    return cls


def build_objective(cfg, source, device) -> Objective:
    """The run's objective: its nets on `device`, optimizers, EMA and schedules, from the config."""
    cls = objective_class(cfg.model.get("objective", DEFAULT))
    if source.kind not in cls.data_kinds:
        if source.kind == "unpaired":
            raise GanlabError(f"dataset={source.name} holds two unpaired image domains, for model=cyclegan; "
                              f"model={cfg.model.name} {cls.data_hint}")
        raise GanlabError(f"model={cfg.model.name} {cls.data_hint}")
    return cls(cfg, source, device)


def with_truncation(state: dict, fraction) -> dict:
    """`state` whose saved config samples with tricks.jacobian_truncation=`fraction` (`ganlab eval` / `ganlab
    sample` jacobian_truncation=, to try the truncation on a trained run); `state` itself when fraction is None."""
    if fraction is None:
        return state
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise GanlabError(f"jacobian_truncation={fraction!r} is not valid: give the share of latents to redraw, "
                          "a number in [0, 1) such as 0.1 (0: none; leave it out for the run's own setting).")
    config = OmegaConf.to_container(OmegaConf.create(state["config"]))
    if config["model"].get("objective", DEFAULT) != "adversarial" and fraction:
        raise GanlabError(f"jacobian_truncation is for the one-G-one-D families; this run is "
                          f"model={config['model']['name']}. Leave out jacobian_truncation=.")
    config.setdefault("tricks", {})["jacobian_truncation"] = float(fraction)
    return {**state, "config": config}


def load_generator(state: dict, ema: bool = True, device="cpu"):
    """The sampling network of a checkpoint (see ganlab.checkpoint.load_checkpoint), rebuilt by its
    family's objective from the saved config (no data is read): EMA weights when the run kept them
    and `ema` is true."""
    cfg = OmegaConf.create(state["config"])
    return objective_class(cfg.model.get("objective", DEFAULT)).load_generator(cfg, state, ema, device)


__all__ = ["OBJECTIVES", "Objective", "Phase", "Runtime", "build_objective", "load_generator", "objective_class",
           "with_truncation"]

"""Objectives: what a training step is, one file per family (see `base.py` for the contract).

A model family picks its objective with `model.objective` (conf/model/*.yaml): a name registered
here, or a dotted path `package.module.Class` to an Objective of your own.
"""

from __future__ import annotations

import math

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


TRUSTED_ENV = "GANLAB_OBJECTIVES"  # comma-separated modules whose objectives a checkpoint may name


def _trusted(module: str) -> bool:
    """A module outside ganlab that a checkpoint names is imported only when this process has it already or the
    user lists it (or a package above it) in $GANLAB_OBJECTIVES: a file never chooses what code runs."""
    import os
    import sys

    listed = [m.strip() for m in os.environ.get(TRUSTED_ENV, "").split(",") if m.strip()]
    return module in sys.modules or any(module == m or module.startswith(m + ".") for m in listed)


def objective_class(name: str, from_file: bool = False) -> type[Objective]:
    """The objective class `name` names: a built-in one, or an Objective subclass by its dotted path (from the
    command line: imported; from a checkpoint, `from_file`: only a module this process trusts, see _trusted)."""
    target = OBJECTIVES.get(name, name)
    module, _, attr = str(target).rpartition(".")
    if from_file and name not in OBJECTIVES and module and not _trusted(module):
        raise GanlabError(f"the checkpoint names model.objective={name!r}, code outside ganlab, and ganlab imports no "
                          f"module that a file names. If you trust it, say so: {TRUSTED_ENV}={module} ganlab ...")
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


NOISE_MODES = ("random", "const")


def with_sampling(state: dict, truncation=None, cutoff=None, noise=None) -> dict:
    """`state` whose saved config samples with StyleGAN's truncation psi (`truncation`, from the first `cutoff`
    ws; all: None) and `noise` (random: fresh noise per image; const: the network's stored noise images, as the
    official noise_mode='const'), for `ganlab sample` / `ganlab eval`; `state` itself when all are None."""
    if truncation is None and cutoff is None and noise is None:
        return state
    if truncation is not None and (isinstance(truncation, bool) or not isinstance(truncation, (int, float))
                                   or not math.isfinite(truncation)):
        raise GanlabError(f"truncation={truncation!r} is not valid: give psi as a number, e.g. truncation=0.7 (1: none, "
                          "0: every sample is the average w's image).")
    if cutoff is not None and (isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 0):
        raise GanlabError(f"truncation_cutoff={cutoff!r} is not valid: give the number of ws to truncate (e.g. 8), "
                          "or leave it out for all of them.")
    if noise is not None and noise not in NOISE_MODES:
        raise GanlabError(f"noise={noise!r} is not valid: use random (fresh noise per image) or const (the network's "
                          "stored noise images).")
    config = OmegaConf.to_container(OmegaConf.create(state["config"]))
    if config["model"].get("objective", DEFAULT) != "stylegan":
        given = ", ".join(k for k, v in (("truncation", truncation), ("truncation_cutoff", cutoff), ("noise", noise))
                          if v is not None)
        raise GanlabError(f"{given} need a generator with a mapping network and noise inputs (model=stylegan); this "
                          f"run is model={config['model']['name']}. Leave out {given}.")
    config["sampling"] = {"truncation": 1.0 if truncation is None else float(truncation), "truncation_cutoff": cutoff,
                          "noise": noise or "random"}
    return {**state, "config": config}


def load_generator(state: dict, ema: bool = True, device="cpu"):
    """The sampling network of a checkpoint (see ganlab.checkpoint.load_checkpoint), rebuilt by its
    family's objective from the saved config (no data is read): EMA weights when the run kept them
    and `ema` is true."""
    cfg = OmegaConf.create(state["config"])
    return objective_class(cfg.model.get("objective", DEFAULT), from_file=True).load_generator(cfg, state, ema, device)


__all__ = ["OBJECTIVES", "Objective", "Phase", "Runtime", "build_objective", "load_generator", "objective_class",
           "with_sampling", "with_truncation"]

"""Starting and continuing a run: seeding, every RNG's state, which checkpoint a run continues and whether it
fits the run's model and data."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ganlab.checkpoint import load_checkpoint, load_latest
from ganlab.errors import GanlabError
from ganlab.objectives import DEFAULT as DEFAULT_OBJECTIVE


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Every RNG the loop draws from, in plain containers (loads with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# What must match for a checkpoint to be continued: the model and the data (where the data live may move).
_DATASET_LOCATION_KEYS = ("root", "download", "system_dirs")


def _differences(old: dict, new: dict, prefix: str) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if prefix == "dataset" and key in _DATASET_LOCATION_KEYS:
            continue
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def check_resumable(saved: dict, cfg: DictConfig, path: Path) -> None:
    now = OmegaConf.to_container(cfg, resolve=True)
    saved_model = {"objective": DEFAULT_OBJECTIVE, **saved.get("model", {})}  # runs from before model.objective
    diffs = _differences(saved_model, now["model"], "model")
    diffs += _differences(saved.get("dataset", {}), now["dataset"], "dataset")
    if diffs:
        raise GanlabError(
            f"cannot resume {path}: it was trained with another model or dataset ("
            + "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
            + "). Resume with the run's own model= and dataset=, or start a new run."
        )


def checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> tuple[dict | None, Path | None, bool]:
    """(the checkpoint a run continues, or None for a new run; its file; whether a resume=auto run is finished).

    resume=true / a run dir: the run's newest intact checkpoint (last.pt, else the newest numbered
    one that loads, with a warning); resume=PATH.pt: that file; resume=auto: like true when the run
    dir holds a run, else a new run. A new run into a dir holding a checkpoint is refused."""
    ckpt_dir = run_dir / "checkpoints"
    resume = cfg.get("resume", False)
    auto = resume == "auto"
    if auto:  # continue this run dir's run if it has one (a requeued cluster job), else start one
        resume = (ckpt_dir / "last.pt").exists()
    if resume in (False, None, "false", ""):
        if (ckpt_dir / "last.pt").exists():
            raise GanlabError(f"{run_dir} already holds a run (checkpoints/last.pt); add resume=true to continue it, "
                              "or choose another hydra.run.dir so nothing is overwritten.")
        return None, None, False
    if resume in (True, "true"):
        if not (ckpt_dir / "last.pt").is_file():
            raise GanlabError(f"resume=true but {run_dir} holds no checkpoints/last.pt; pass hydra.run.dir=RUN_DIR of "
                              "the run to continue, or resume=PATH to a run dir or checkpoint.")
        state, path = load_latest(ckpt_dir)
    else:
        path = Path(str(resume)).expanduser()
        state, path = load_latest(path / "checkpoints") if path.is_dir() else (load_checkpoint(path), path)
    check_resumable(state["config"], cfg, path)
    if int(state["step"]) >= cfg.train.steps:
        if auto:  # a finished job run again (a sweep launched anew): nothing to do
            return state, path, True
        raise GanlabError(f"the run in {run_dir} is already at step {state['step']} (train.steps={cfg.train.steps}); "
                          f"pass a larger train.steps to continue it.")
    return state, path, False


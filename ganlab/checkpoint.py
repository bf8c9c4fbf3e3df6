"""Checkpoints: one dict of plain containers and tensors, written atomically, read with weights_only."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from ganlab.errors import GanlabError


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `state` to `path` atomically: a temp file in the same dir, fsync, then rename over it.

    A crash mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_checkpoints(state: dict, ckpt_dir: Path, step: int, keep: int) -> Path:
    """checkpoints/last.pt plus, when keep > 0, step_XXXXXXXX.pt with only the newest `keep` of
    those kept. last.pt is a hard link to the numbered file (one write), swapped in atomically."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / "last.pt"
    if keep <= 0:
        save_checkpoint(state, last)
        return last
    numbered = ckpt_dir / f"step_{step:08d}.pt"
    save_checkpoint(state, numbered)
    tmp = ckpt_dir / ".last.pt.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(numbered, tmp)
    except OSError:  # file systems without hard links
        import shutil

        shutil.copyfile(numbered, tmp)
    os.replace(tmp, last)
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return last


REQUIRED_KEYS = ("generator", "discriminator", "step", "config")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a ganlab checkpoint with `torch.load(weights_only=True)`; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise GanlabError(f"checkpoint {path} does not exist; give the path of a run's checkpoints/last.pt.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GanlabError(
            f"checkpoint {path} is truncated, corrupt or not a ganlab checkpoint ({first[:200]}); "
            "use another checkpoint of the run or start a new run."
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise GanlabError(
            f"checkpoint {path} is not a ganlab checkpoint (it lacks {', '.join(REQUIRED_KEYS)}); "
            "give the path of a run's checkpoints/last.pt."
        )
    return state

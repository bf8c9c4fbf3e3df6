"""Checkpoints: one dict of plain containers and tensors, written atomically, read with weights_only.

The training loop writes them (ganlab.train), sampling and evaluation read them: both meet here,
below either.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from ganlab.errors import GanlabError
from ganlab.safeload import load_torch

log = logging.getLogger("ganlab")


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


REQUIRED_KEYS = ("step", "config")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a ganlab checkpoint with torch's weights-only unpickler (ganlab.safeload: no code runs); clear errors
    for bad files."""
    path = Path(path)
    if not path.is_file():
        raise GanlabError(f"checkpoint {path} does not exist; give the path of a run's checkpoints/last.pt.")
    state = load_torch(path, "a ganlab checkpoint", "Use another checkpoint of the run or start a new run.",
                       map_location)
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise GanlabError(
            f"checkpoint {path} is not a ganlab checkpoint (it lacks {', '.join(REQUIRED_KEYS)} or is not a dict); "
            "give the path of a run's checkpoints/last.pt."
        )
    return state


def load_latest(ckpt_dir: Path, map_location="cpu") -> tuple[dict, Path]:
    """The run's newest intact checkpoint: checkpoints/last.pt, or, when that file is truncated or
    corrupt (a crash mid-write on a file system without atomic renames, a full disk, a bad copy),
    the newest numbered step_XXXXXXXX.pt that loads, with a warning naming what was skipped. Only
    when none loads is it an error."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / "last.pt"
    try:
        return load_checkpoint(last, map_location), last
    except GanlabError as first:
        skipped = [f"last.pt ({first})"]
        for numbered in sorted(ckpt_dir.glob("step_*.pt"), reverse=True):
            try:
                state = load_checkpoint(numbered, map_location)
            except GanlabError as exc:
                skipped.append(f"{numbered.name} ({exc})")
                continue
            log.warning(f"{last} cannot be read; resuming from {numbered.name} (step {state['step']}), the newest intact "
                        f"checkpoint. Skipped: " + "; ".join(skipped))
            return state, numbered
        raise GanlabError(f"no checkpoint in {ckpt_dir} can be read ({'; '.join(skipped)}); start a new run "
                          "in another hydra.run.dir.") from None


def checkpoint_path(run: str, which) -> Path:
    """A run dir's checkpoint by name: `last`, `best` (kept by eval.monitor) or a step; a file as is."""
    path = Path(str(run)).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise GanlabError(f"run={run}: no such run dir or checkpoint; give a run dir of `ganlab train`.")
    name = f"{which}.pt" if str(which) in ("last", "best") else f"step_{int(which):08d}.pt"
    ckpt = path / "checkpoints" / name
    if not ckpt.is_file():
        have = ", ".join(sorted(p.name for p in (path / "checkpoints").glob("*.pt"))) or "none"
        raise GanlabError(f"{ckpt} does not exist (checkpoints there: {have}); pick one with checkpoint=last, best or a step.")
    return ckpt


def _step_of(name: str) -> int | None:
    """The step of a numbered checkpoint's file name (step_XXXXXXXX.pt), else None."""
    stem = name[len("step_"):-len(".pt")] if name.startswith("step_") and name.endswith(".pt") else ""
    return int(stem) if stem.isdigit() else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def set_aside_future(ckpt_dir: Path, step: int, resumed: Path) -> Path | None:
    """A run resumed from step `step` (the file `resumed`) abandons what its dir holds of later steps: the
    numbered checkpoints above `step`, and last.pt and best.pt unless they are that very checkpoint or older.
    They are moved, not deleted, to checkpoints/abandoned-after-<step>[-N]/, so that no later fall-back
    (load_latest: last.pt unreadable -> the newest numbered file) can pick a state of the abandoned branch.
    last.pt is then the resumed checkpoint again when that lies in the dir. Returns the folder, or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    future = [p for p in ckpt_dir.glob("step_*.pt") if (_step_of(p.name) or 0) > step]
    for name in ("last.pt", "best.pt"):
        path = ckpt_dir / name
        if not path.is_file() or _same_file(path, resumed):
            continue
        if any(_same_file(path, p) for p in future):
            future.append(path)
            continue
        try:
            saved = int(torch.load(path, map_location="cpu", weights_only=True)["step"])
        except Exception:  # unreadable (the reason a fall-back resumed an older file): not of this branch
            saved = None
        if saved is None or saved > step:
            future.append(path)
    if not future:
        return None
    aside, n = ckpt_dir / f"abandoned-after-{step}", 1
    while aside.exists():
        n += 1
        aside = ckpt_dir / f"abandoned-after-{step}-{n}"
    aside.mkdir()
    for path in future:
        os.replace(path, aside / path.name)
    last = ckpt_dir / "last.pt"
    if not last.exists() and Path(resumed).parent.resolve() == ckpt_dir.resolve() and Path(resumed).is_file():
        try:
            os.link(resumed, last)
        except OSError:
            import shutil

            shutil.copyfile(resumed, last)
    log.warning(f"resuming from step {step}: the later checkpoints of the abandoned run ("
                f"{', '.join(sorted(p.name for p in future))}) were moved to {aside}, so no fall-back picks them")
    return aside

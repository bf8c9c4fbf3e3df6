"""What a command that writes files next to what it reads may write: never over its inputs, never into a run's
checkpoints, and over an existing file only when the user says overwrite=true.

`check_out(out, inputs, overwrite)` runs before anything is read in earnest or written:
- always refused: an out= inside a run's checkpoints/ folder, or one that is or contains a run dir holding
  checkpoints/last.pt (a run dir that holds a checkpoint is never written into by these commands);
- refused unless overwrite=true: an out= that is, contains or lies inside an input (a folder, a file, the
  run dir read), and (`check_targets`) any output file that exists already.
"""

from __future__ import annotations

from pathlib import Path

from ganlab.errors import GanlabError


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _run_dirs_under(out: Path) -> list[Path]:
    """Run dirs (holding checkpoints/last.pt) that `out` is, lies in, or contains (a shallow look: 3 levels)."""
    found = [p for p in (out, *out.parents) if (p / "checkpoints" / "last.pt").is_file()]
    if out.is_dir():
        for depth in ("*", "*/*", "*/*/*"):
            found += [p.parent.parent for p in out.glob(f"{depth}/checkpoints/last.pt")]
    return found


def check_out(out: Path, inputs: dict[str, Path], overwrite: bool, what: str) -> Path:
    """Refuse `out` (see the module docstring); `inputs`: the command's key -> path it reads. Returns out."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    if any(part == "checkpoints" for part in resolved.parts) and any(
            (p / "last.pt").is_file() for p in (resolved, *resolved.parents) if p.name == "checkpoints"):
        raise GanlabError(f"out={out} lies in a run's checkpoints folder, which ganlab never writes {what} into; "
                          "pick an out= elsewhere.")
    if not resolved.suffix:  # a folder of outputs: never mixed into (or around) a run dir
        runs = _run_dirs_under(resolved)
        if runs:
            raise GanlabError(f"out={out} is, contains or lies in the run dir {runs[0]}, which holds a checkpoint; "
                              f"ganlab writes no {what} there. Pick an out= outside it.")
    if overwrite:
        return out
    for key, path in inputs.items():
        src = Path(path).expanduser().resolve()
        if resolved == src:
            relation = "is"
        elif src.is_dir() and _inside(resolved, src):
            relation = "lies inside"
        elif _inside(src, resolved):
            relation = "contains"
        else:
            continue
        raise GanlabError(f"out={out} {relation} {key}={path}, which this command reads: the {what} would mix with or "
                          "replace what it reads. Pick an out= outside it, or add overwrite=true.")
    return out


def check_targets(targets: list[Path], overwrite: bool, what: str) -> None:
    """Refuse, before anything is written, to replace files that exist (unless overwrite=true)."""
    if overwrite:
        return
    existing = [p for p in targets if p.exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise GanlabError(f"{existing[0]}{more} exist(s) already: the {what} would replace them. Pick another out=, "
                          "or add overwrite=true.")


def overwrite_flag(cfg) -> bool:
    value = cfg.get("overwrite", False)
    if not isinstance(value, bool):
        raise GanlabError(f"overwrite={value!r} is not valid: use true or false.")
    return value


def file_out(cfg, what: str) -> Path:
    """A command's single output file (`out=`), checked against the run it reads (`run=`) and against what
    exists, before the run is loaded."""
    overwrite = overwrite_flag(cfg)
    out = check_out(Path(str(cfg.out)), {"run": Path(str(cfg.run))}, overwrite, what)
    check_targets([out], overwrite, what)
    return out

"""status.json in every run dir: what ran, how it ended, and its final metrics.

Written when a run starts ("running") and when it ends ("ok", "failed", "diverged",
"interrupted"); a run killed outright stays "running". `ganlab report` reads these files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STATUS_FILE = "status.json"


def write_status(run_dir: Path, **fields) -> None:
    path = Path(run_dir) / STATUS_FILE
    data = read_status(path.parent) or {}
    data.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    tmp = path.with_suffix(".json.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_runs(root: Path) -> list[Path]:
    """Every run dir (a dir holding status.json) under root, root included."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(STATUS_FILE))

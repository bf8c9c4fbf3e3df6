"""`ganlab report DIR`: one row per run under DIR (a multirun dir, or outputs/ as a whole)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

from ganlab.errors import GanlabError
from ganlab.runinfo import find_runs, read_status

BASE_COLUMNS = ["run", "overrides", "status", "steps", "wall_s"]


def collect(root: Path) -> list[dict]:
    rows = []
    for run in find_runs(root):
        st = read_status(run) or {}
        row = {
            "run": str(run.relative_to(root)) if run != root else run.name,
            "overrides": " ".join(st.get("overrides", [])),
            "status": st.get("status", "?"),
            "steps": f"{st.get('step', 0)}/{st.get('steps', '?')}",
            "wall_s": round(float(st.get("wall_s", 0.0)), 1),
            "error": st.get("error", ""),
        }
        for key, value in (st.get("metrics") or {}).items():
            row[key] = value
        rows.append(row)
    return rows


def _sort_key(metric: str):
    def key(row):
        value = row.get(metric)
        bad = not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value))
        return (bad, value if not bad else 0)
    return key


def render(rows: list[dict], fmt: str) -> str:
    metrics = sorted({k for r in rows for k in r} - set(BASE_COLUMNS) - {"error"})
    columns = BASE_COLUMNS + metrics + ["error"]
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def cell(value, limit: int | None = None):
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"

    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(r.get(c, "")).replace("|", "\\|") for c in columns) + " |" for r in rows]
        return "\n".join(lines)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} runs")
    for c in columns:
        table.add_column(c, overflow="fold")
    colors = {"ok": "green", "failed": "red", "diverged": "red", "interrupted": "yellow", "running": "yellow"}
    for r in rows:
        cells = [cell(r.get(c, ""), 120 if c == "error" else None) for c in columns]
        cells[2] = f"[{colors.get(r['status'], 'white')}]{cells[2]}[/]"
        table.add_row(*cells)
    console = Console(width=None if sys.stdout.isatty() else 4000)  # no folding when written to a file or pipe
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ganlab report", description=__doc__)
    ap.add_argument("dir", type=Path, nargs="?", default=Path("outputs"), help="a multirun dir or outputs/ (default)")
    ap.add_argument("--sort", metavar="METRIC", help="sort by this column, ascending (e.g. Loss/G, wall_s)")
    ap.add_argument("--desc", action="store_true", help="sort descending")
    ap.add_argument("--format", choices=["table", "csv", "markdown", "json"], default="table")
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        raise GanlabError(f"{args.dir} is not a directory; give a multirun dir or outputs/.")
    rows = collect(args.dir)
    if not rows:
        raise GanlabError(f"no runs (status.json) under {args.dir}; point ganlab report at a run, sweep or outputs/ dir.")
    if args.sort:
        if all(args.sort not in r for r in rows):
            known = sorted({k for r in rows for k in r})
            raise GanlabError(f"--sort {args.sort}: no run has that column; use one of {', '.join(known)}.")
        rows.sort(key=_sort_key(args.sort), reverse=args.desc)
    print(render(rows, args.format))
    return 0

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
from ganlab.health import summary
from ganlab.runinfo import find_runs, read_status

BASE_COLUMNS = ["run", "overrides", "status", "steps", "wall_s", "health"]


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
            "health": summary(st.get("health") or []),
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
        cells[5] = f"[yellow]{cells[5]}[/]" if cells[5] else ""
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
    ap.add_argument("--plot", metavar="PNG", type=Path, help="also draw a metric over the steps, one line per run")
    ap.add_argument("--metric", metavar="TAG", help="the scalar to plot (default: Metrics/fd, Metrics/reverse_kl or "
                                                    "Loss/G, the first any run logged), e.g. Health/diversity")
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
    if args.plot:
        plot(args.dir, rows, args.plot, args.metric)
    return 0


PLOT_DEFAULTS = ("Metrics/fd", "Metrics/reverse_kl", "Loss/G")


def plot(root: Path, rows: list[dict], out: Path, metric: str | None) -> Path:
    """`--plot`: `metric` over the steps for every run (as TensorBoard logged it), one line each, to a PNG."""
    from ganlab.monitor import read_scalars
    from ganlab.plots import curves_figure, save

    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise GanlabError(f"--plot {out}: give a file name ending in .png (or .pdf, .svg).")
    def run_dir(row) -> Path:  # collect() names a run by its path under root, or root's name when root is the run
        return root if (root / "status.json").is_file() and row["run"] == root.name else root / row["run"]

    logged = {r["run"]: read_scalars(run_dir(r)) for r in rows}
    tags = {t for s in logged.values() for t in s}
    if metric is None:
        metric = next((t for t in PLOT_DEFAULTS if t in tags), None)
        if metric is None:
            raise GanlabError(f"no run under {root} logged any of {', '.join(PLOT_DEFAULTS)}; pick one with --metric TAG.")
    if metric not in tags:
        close = sorted(t for t in tags if metric.split("/")[-1].lower() in t.lower()) or sorted(tags)[:12]
        raise GanlabError(f"--metric {metric}: no run logged it; runs logged e.g. {', '.join(close)}.")
    labels = {r["run"]: (r["overrides"] or r["run"]) for r in rows}
    fig = curves_figure({labels[run]: s.get(metric, []) for run, s in logged.items() if s.get(metric)}, metric,
                        f"{metric} ({sum(1 for s in logged.values() if s.get(metric))} runs of {root})")
    save(fig, out)
    print(f"plot of {metric}: {out}")
    return out

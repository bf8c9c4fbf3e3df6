"""`ganlab train -m`: what an optimizing sweeper optimizes, and how a sweep reports its failed jobs."""

from __future__ import annotations

from pathlib import Path

from ganlab.cli.common import report_error
from ganlab.errors import GanlabError

failures: list[str] = []  # the failed jobs of the sweep that just ran (SweepStatus.on_multirun_end)
_sweep_dir: list[Path] = []  # the sweep this process runs now (the guarded sweepers read it)


def optimizing(hc) -> bool:
    """Whether the sweep's sweeper optimizes a number the task returns (Optuna, Ax, Nevergrad, ...)."""
    return "BasicSweeper" not in str(hc.sweeper.get("_target_", "BasicSweeper"))


def default_optimize_metric(cfg) -> str | None:
    """What an optimizing sweeper minimizes when optimize_metric is not set: Metrics/reverse_kl (the
    mode histogram's KL to uniform, scored at the end of every run) for the 2D mixtures,
    Metrics/fd (the final Fréchet distance) for images when runs are evaluated (eval.every), else
    None (nothing is scored at the end of an image run)."""
    from ganlab.data.sources import build_source

    try:
        kind = build_source(cfg.dataset).kind  # reads no data
    except GanlabError:
        return None
    if kind == "points":
        return "Metrics/reverse_kl"
    return "Metrics/fd" if cfg.eval.get("every") else None


def failed_runs(sweep_dir: Path) -> tuple[list[str], int]:
    """(`<run>: <error>` for each failed or diverged run of the sweep dir, how many runs it holds)."""
    from ganlab.runinfo import find_runs, read_status

    if not sweep_dir.is_dir():
        return [], 0
    runs = list(find_runs(sweep_dir))
    out = []
    for run in runs:
        st = read_status(run) or {}
        if st.get("status") in ("failed", "diverged"):
            out.append(f"{run.name}: {st.get('error', '')}")
    return out, len(runs)


def _guard_sweeper(target: str) -> None:
    """An optimizing sweeper whose every trial failed asks its study for the best trial and raises (Optuna:
    "No trials are completed yet"), a traceback that hides the trials' own errors: that becomes one line
    naming them, exit 1 (a SystemExit, which Hydra passes through without its traceback or hints). The sweeper
    class's `sweep` is wrapped once, in this process only."""
    import importlib

    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return
    if getattr(cls.sweep, "_ganlab_guarded", False):
        return
    original = cls.sweep

    def sweep(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except Exception as exc:
            sweep_dir = _sweep_dir[-1] if _sweep_dir else Path(".")
            failed, total = failed_runs(sweep_dir)
            if not total or len(failed) < total:
                raise
            report_error(f"every trial of the sweep failed ({len(failed)} of {total}), so it has no best trial "
                         f"({type(exc).__name__}: {exc}): " + "; ".join(failed)
                         + f" (fix that and run the sweep again; ganlab report {sweep_dir} lists every run)")
            raise SystemExit(1) from None

    sweep._ganlab_guarded = True
    cls.sweep = sweep


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class SweepStatus(Callback):
    """Before a sweep: an optimizing sweeper (Optuna) without optimize_metric gets the data's default
    metric, or one line naming the fix before any trial runs; a study none of whose trials succeeds
    ends in one line, not a traceback. After it (any launcher, jobs in this process or not): count the
    runs that failed."""

    def on_multirun_start(self, config, **kwargs) -> None:
        if not optimizing(config.hydra):
            return
        _sweep_dir[:] = [Path(config.hydra.sweep.dir)]
        _guard_sweeper(str(config.hydra.sweeper.get("_target_", "")))
        if config.get("optimize_metric"):
            return
        direction = config.hydra.sweeper.get("direction", "minimize")
        direction = getattr(direction, "name", direction)  # Optuna's structured config holds an enum
        metric = default_optimize_metric(config)
        if metric is None or str(direction) != "minimize":
            why = ("image runs are scored at the end only with eval.every" if metric is None
                   else f"hydra.sweeper.direction={direction}, while the default {metric} is to be minimized")
            report_error(f"an optimizing sweeper needs the number to optimize and optimize_metric is not set ({why}): "
                         "add optimize_metric=NAME (e.g. optimize_metric=Metrics/fd eval.every=1000 for images, "
                         "Metrics/reverse_kl for ring8/grid25) and the matching hydra.sweeper.direction.")
            raise SystemExit(2)
        import logging

        logging.getLogger("ganlab").info(f"optimize_metric is not set: the sweeper minimizes {metric}, each run's "
                                         "final value (optimize_metric=NAME picks another)")

    def on_multirun_end(self, config, **kwargs) -> None:
        failed, _ = failed_runs(Path(config.hydra.sweep.dir))
        failures.extend(failed)

"""Everything that reports on a run: TensorBoard event files and the console (rich or plain).

Nothing else in ganlab knows about either: the loop writes through `Monitor`, and what reads a run's
curves back (`ganlab report --plot`, the results scripts) goes through `read_scalars`. Values arrive
here already on the host (the training loop syncs only on logging steps).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("ganlab")


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _NoWriter:
    """The writer of a process that does not write (ranks other than 0 under torchrun)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Monitor:
    def __init__(self, run_dir: Path, total_steps: int, mode: str = "auto", start_step: int = 0,
                 budget_s: float | None = None, enabled: bool = True):
        # purge_step: TensorBoard drops events at or after it from earlier files (a resumed run
        # re-logs the steps after its checkpoint, and a run started again after being killed before
        # its first checkpoint re-logs all of them, so no step shows twice)
        self.log_dir, self.enabled = str(Path(run_dir) / "tb"), enabled
        self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=start_step + 1) if enabled else _NoWriter()
        self.total = total_steps
        self.start_step = start_step
        self.budget_s = budget_s  # train.max_minutes: the run stops then, whatever the step count says
        self.t0 = time.monotonic()
        console = Console(file=sys.stdout)
        if not enabled:
            mode = "none"
        if mode == "auto":
            mode = "rich" if console.is_terminal else "plain"
        self.mode = mode
        self.progress = None
        if mode == "rich":
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                TextColumn("{task.fields[losses]}"), console=console, transient=False,
            )
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step,
                                               rate="", losses="", eta="-:--:--")
            self.progress.start()

    def start_clock(self) -> None:
        """The training clock (steps/s, ETA, the time budget) starts with the first step, not the set-up."""
        self.t0 = time.monotonic()

    def eta(self, step: int) -> float:
        """Seconds left: the steps still to go at the rate so far, or the time budget left when that
        ends the run first (train.max_minutes)."""
        elapsed = time.monotonic() - self.t0
        left = elapsed / max(step - self.start_step, 1) * (self.total - step)
        if self.budget_s is not None:
            left = min(left, max(0.0, self.budget_s - elapsed))
        return left

    def tick(self, step: int) -> None:
        """Move the progress bar (host-side only: no device sync)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        losses = "  ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in values.items()  # D, G; per level: D_0, G_0, ...
                           if k.startswith(("Loss/D", "Loss/G")))
        rate = values.get("Perf/steps_per_s", 0.0)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, rate=f"{rate:.1f} it/s", losses=losses,
                                 eta=_fmt_duration(self.eta(step)))
        elif self.mode == "plain" and not losses:
            log.info(f"step {step}/{self.total}  " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
        elif self.mode == "plain":
            eta = self.eta(step)
            extras = "  ".join(f"{k} {v:.3g}" for k, v in values.items() if k.startswith(("D/", "Metrics/")))
            log.info(f"step {step}/{self.total}  {losses}  {extras}  {rate:.1f} it/s  "
                     f"{values.get('Perf/images_per_s', 0.0):.0f} img/s  ETA {_fmt_duration(eta)}")

    def restart(self, step: int) -> None:
        """Training went back to `step` (train.on_nan=rollback): a new event file whose purge marker makes
        TensorBoard drop what was logged after that step, as a resume does."""
        self.writer.close()
        self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=step + 1) if self.enabled else _NoWriter()
        self.start_step, self.t0 = step, time.monotonic()

    def finding(self, step: int, kind: str, message: str) -> None:
        """A watchdog finding (ganlab.health): a console warning, Health/<kind> = 1 at its step, and its text."""
        if not self.enabled:
            return
        self.writer.add_scalar(f"Health/{kind}", 1.0, step)
        self.writer.add_text("Health", f"step {step}: **{kind}**: {message}", step)
        text = f"health: step {step}: {kind}: {message}"
        if self.progress is not None:
            self.progress.console.print(f"[yellow]warning[/]: {text}", highlight=False)
        else:
            log.warning(text)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="CHW")

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """TensorBoard's HParams plugin data for this run: its hparams, and metric names that point
        at scalar tags already logged here (the plugin reads their values from those scalars)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        if not self.enabled:
            return

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        exp, ssi, sei = hparams_summary(clean, metrics)
        writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.writer.flush()
        self.writer.close()


def read_scalars(run_dir: Path, tags: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """A run's logged scalars, {tag: [(step, value), ...]} (every tag, or those of `tags` it has), read with
    TensorBoard's own reader from <run dir>/tb (purged steps of resumes and rollbacks already dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    have = acc.Tags().get("scalars", [])
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in have if tags is None or t in tags}

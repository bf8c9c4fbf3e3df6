"""The run's reporting part: a logging window's scalars (one host read), the watchdog's findings, the sample
grids and the run's last words. A mixin of ganlab.train's run."""

from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf

from ganlab import distributed
from ganlab.errors import GanlabError
from ganlab.health import diversity
from ganlab.run.runtime import grad_norm
from ganlab.runinfo import write_status
from ganlab.viz import image_grid

log = logging.getLogger("ganlab")


class Reporting:
    def setup_health(self) -> None:
        """Health/diversity: samples of fixed latents against as many real samples (their diversity, once)."""
        cfg = self.cfg
        n_div = int(cfg.health.diversity_n) if cfg.health.enabled and self.objective.samples_from_noise else 0
        self.diversity_n, self.real_diversity = n_div, None
        if n_div:
            self.real_diversity = float(diversity(self.batches.preview(n_div)))
            if not self.real_diversity > 0:
                self.diversity_n = 0  # a data set of one repeated sample: nothing to compare with

    def announce(self) -> None:
        """The run's first console line, and (a new run) its config and real samples in TensorBoard."""
        cfg, t, source, obj = self.cfg, self.cfg.train, self.source, self.objective
        verb = f"resuming at step {self.start_step}:" if self.start_step else "training"
        ranks = (f" | DDP over {self.dist.world} processes ({self.dist.backend}), {int(t.batch_size) // self.dist.world} "
                 f"samples each{', SyncBatchNorm' if t.sync_bn else ''}" if self.dist.world > 1 else "")
        if self.main:
            log.info(f"{verb} {cfg.model.name} on {source.name} {tuple(source.shape)} | {obj.describe()} | "
                     f"{obj.batch_description(int(t.batch_size))}{ranks} | device {self.device} | run dir {self.run_dir}")
        if not self.start_step:
            self.monitor.text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
            if source.kind in ("image", "unpaired"):
                self.monitor.image("Samples/real", image_grid(self.batches.preview(t.n_samples)), 0)

    def log_window(self, step: int, steps_per_s: float) -> None:
        if self.dist.world > 1:  # every rank learns of a NaN on any rank, and that the ranks still agree
            self._agree_on_divergence(step)
        if bool(self.logs.first_bad):  # the one host sync per log window
            raise self.diverged(step)
        values = self.logs.means()
        counted = bool(values)
        for name, params in self.opt_params.items():
            values[f"Grad/{name.upper()}_norm"] = float(grad_norm(params))
        values.update(self.objective.scalars(step))
        if self.cfg.train.lr_decay_from is not None or self.objective.lr_schedule is not None:
            values.update({f"Train/lr_{name}": opt.param_groups[0]["lr"] for name, opt in self.objective.optimizers.items()})
        if self.skip_nan:
            values["Train/skipped_updates"] = float(self.skipped)
        values["Perf/steps_per_s"] = steps_per_s
        values["Perf/images_per_s"] = steps_per_s * self.objective.images_per_step * self.dist.world
        if not counted:  # every update of the window was skipped: no loss means to show
            values = {k: v for k, v in values.items() if k.startswith(("Train/", "Perf/"))}
        elif self.diversity_n:
            values["Health/diversity"] = self.sample_diversity()
        self.monitor.scalars(step, values)
        self.last = values if counted else self.last
        self.report_health(step, self.health.window(step, values))

    def sample_diversity(self) -> float:
        """Health/diversity: mean pairwise distance of health.diversity_n samples of fixed latents (EMA when
        kept) over that of as many real samples; ~1 for a G that covers the data, ~0 for one output."""
        with self._aside():
            fake = self.objective.generate(self.diversity_n, torch.Generator().manual_seed(self.cfg.seed + 5))
        return float(diversity(fake)) / self.real_diversity

    def report_health(self, step: int, findings: list[dict]) -> None:
        """Each finding: a console warning, Health/<kind> (scalar and text) in TensorBoard, status.json's `health`."""
        for f in findings:
            self.monitor.finding(step, f["kind"], f["message"])
        if findings and self.main:
            write_status(self.run_dir, health=self.health.findings)

    def _agree_on_divergence(self, step: int) -> None:
        """torchrun, on logging steps: the first NaN/Inf step of any rank becomes every rank's (one collective),
        and the ranks' weights are checked to be the same (a net trained outside DDP would let them drift)."""
        big, fingerprint = float(2 ** 62), distributed.params_fingerprint(self.all_params)
        first, lowest = distributed.agree([float(self.logs.first_bad) or big, fingerprint], "min")
        (highest,) = distributed.agree([fingerprint], "max")
        if first < big:
            self.logs.first_bad.fill_(int(first))
        if highest - lowest > 1e-9 * max(abs(highest), 1.0):
            raise GanlabError(f"the {self.dist.world} processes' weights differ at step {step}: a phase ran a net it trains "
                              "outside its objective's fwd (so DDP did not all-reduce its gradients); run it through "
                              "self.fwd[name], or declare the phase with through_ddp=False.")

    def _aside(self):
        """Sampling for grids and metrics draws nothing from the training RNG streams, whatever the
        objective does: a run that samples more often trains the same weights."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def snapshot(self, step: int) -> None:
        with self._aside():
            images = self.objective.snapshot(step)
        for tag, image in images.items():
            self.monitor.image(tag, image, step)

    def _final_words(self) -> str:
        """The final scores in a few words (2D data: the modes found, as the papers count them)."""
        m = {k.split("/", 1)[1]: v for k, v in self.last.items() if k.startswith("Metrics/")}
        if "modes_captured" in m:
            return (f": {m['modes_captured']:.0f} of {len(self.source.modes)} modes ({m['modes_captured_strict']:.0f} "
                    f"with >= 1% of the samples), {100 * m['high_quality']:.1f}% of samples on a mode"
                    + (f" (mode width {m['mode_spread']:.2f}x the data's)" if "mode_spread" in m else ""))
        return (": " + ", ".join(f"{k} {v:.4g}" for k, v in m.items())) if m else ""

"""The run's evaluation part: eval.n samples scored every eval.every steps and at the end, checkpoints/best.pt
kept by eval.monitor; sharded over the ranks under torchrun. A mixin of ganlab.train's run."""

from __future__ import annotations

import json

import torch

from ganlab import distributed
from ganlab.checkpoint import save_checkpoint
from ganlab.errors import GanlabError
from ganlab.metrics.scorer import Scorer, real_samples


class Evaluation:
    def setup_evaluation(self) -> None:
        """The scorer and its real reference when the run is evaluated (eval.every, and always on 2D points), and
        the protocol metrics.json records."""
        cfg, source, ev = self.cfg, self.source, self.cfg.eval
        self.scorer, self.protocol, self.real_ref = None, {}, None
        if not (ev.every or source.kind == "points"):
            return
        _, self.real_ref, real_hist = real_samples(cfg.dataset, int(ev.n), cfg.seed + 3)
        metrics = ev.metrics if isinstance(ev.metrics, str) else list(ev.metrics)
        self.scorer = Scorer(source, self.real_ref, metrics, ev.features, ev.inception_weights, self.device, real_hist)
        self.protocol = {**self.scorer.protocol, "n_fake": int(ev.n),
                         "generated_by": self.objective.sampler_description(),
                         "reference": {"dataset": source.name, "split": cfg.dataset.get("split", "sampled"),
                                       "seed": cfg.seed + 3}}

    def write_metrics(self, step: int, metrics: dict) -> None:
        """metrics.json: the final scores, the best kept, and how they were measured."""
        if self.main:
            (self.run_dir / "metrics.json").write_text(json.dumps(
                {"step": step, "metrics": metrics, "best": self.best,
                 "protocol": {**self.protocol, "generated_by": self.objective.sampler_description()}}, indent=2) + "\n")

    def evaluate(self, step: int) -> dict:
        """Score eval.n samples (EMA when kept); keep checkpoints/best.pt by eval.monitor."""
        ev = self.cfg.eval
        fake, own = self._evaluation(int(ev.n))
        scores = None
        if self.main:  # the samples of every rank, scored once
            sample_scores = self.scorer(fake.float()) if fake is not None else {}
            scores = {f"Metrics/{k}": float(v) for k, v in {**sample_scores, **own}.items()
                      if k not in ("n_samples", "n_modes", "n_classes")}
        scores = distributed.broadcast_object(scores)
        self.monitor.scalars(step, scores)
        self.report_health(step, self.health.metrics(step, scores))
        if ev.monitor:
            if ev.monitor not in scores:
                raise GanlabError(f"eval.monitor={ev.monitor} is not among the metrics ({', '.join(scores)}).")
            value, best = scores[ev.monitor], self.best
            if best.get("value") is None or (value < best["value"] if ev.mode == "min" else value > best["value"]):
                best.update(step=step, value=value, monitor=ev.monitor)
                state = self.training_state(step)  # every rank (it gathers), rank 0 writes
                if self.main:
                    save_checkpoint(state, self.ckpt_dir / "best.pt")
        return scores

    def _evaluation(self, n: int) -> tuple[torch.Tensor | None, dict]:
        """The objective's evaluation of n samples (aside from the training streams); under torchrun sharded:
        each rank makes its share against its slice of the reference, rank 0 gets them all and the size-weighted
        means of the family's own metrics."""
        w, r = self.dist.world, self.dist.rank
        share = n // w + (1 if r < n % w else 0)
        real = self.real_ref if w == 1 or self.real_ref is None else self.real_ref[r::w]
        with self._aside():
            fake, own = self.objective.evaluation(share, torch.Generator().manual_seed(self.cfg.seed + 4 + 7919 * r), real)
        if w == 1:
            return fake, own
        parts = distributed.gather_objects((None if fake is None else fake.float().cpu(), own, share))
        if not self.main:
            return None, {}
        fakes = [f for f, _, _ in parts if f is not None]
        merged = {k: sum(o[k] * m for _, o, m in parts) / sum(m for _, _, m in parts) for k in parts[0][1]}
        return (torch.cat(fakes) if fakes else None), merged

"""The training watchdog: cheap checks on the numbers a logging window has already brought to the host.

It runs on logging steps only (and after each evaluation); nothing here reads the device between them.
Each finding is reported once when its condition sets in and re-armed when the condition clears, so a
long bad stretch is one warning, not one per window:

- `d_saturated`: D(x) >= 1 - `saturation` and D(G(z)) <= `saturation` (the sigmoid losses' D/D(x) and
  D/D(G(z))) for `saturation_windows` windows in a row: D separates real from fake perfectly, so
  log(1 - D(G(z))) is flat and the minimax G's gradients vanish (Goodfellow et al. 2014, sec. 3;
  Arjovsky & Bottou 2017, Thm 2.4).
- `grad_exploding`: a gradient norm (Grad/<OPT>_norm) above `grad_factor` x its median over the earlier
  windows, or not finite.
- `diversity_drop`: Health/diversity, the mean pairwise distance of samples from fixed latents over that
  of as many real samples, below `diversity_drop` x its best so far (at most 1: samples spread wider
  than the data are unstable, not collapsed): G maps many z to few outputs (mode collapse).
- `metric_regression`: an evaluated metric (eval.monitor, else fd or reverse_kl) worse than its best by
  more than `metric_regress` of the best's size.
- `rollback` (from the loop, train.on_nan=rollback): a NaN/Inf loss undone by reloading the last good
  checkpoint with lower learning rates.

The watchdog's memory (medians, bests, what is armed) is checkpointed, so a resumed run warns as an
uninterrupted one would.
"""

from __future__ import annotations

import math
import statistics

import torch

from ganlab.errors import GanlabError

# evaluated metrics where larger is better; every other metric is taken as lower-is-better
HIGHER_IS_BETTER = {"is", "precision", "recall", "density", "coverage", "modes_captured", "modes_captured_strict",
                    "high_quality", "n_classes", "psnr_hole", "ssim_hole", "score", "cas"}
# what is watched when eval.monitor is not set, in this order of preference
DEFAULT_WATCHED = ("Metrics/fd", "Metrics/reverse_kl")
KINDS = ("d_saturated", "grad_exploding", "diversity_drop", "metric_regression", "rollback")


def diversity(x: torch.Tensor) -> torch.Tensor:
    """Mean pairwise L2 distance between the rows of x (samples flattened): 0 when every sample is the same."""
    flat = x.detach().float().flatten(1)
    return torch.pdist(flat).mean() if len(flat) > 1 else torch.zeros((), device=x.device)


def validate_health(h) -> None:
    """Bad watchdog settings end in one clear error before anything runs."""
    def number(key, low, high=None, integer=False):
        v = h[key]
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or v < low or (high is not None and v > high):
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise GanlabError(f"health.{key}={v!r} is not valid: it must be {'an integer' if integer else 'a number'} "
                              f"{span}.")
    if not isinstance(h.enabled, bool):
        raise GanlabError(f"health.enabled={h.enabled!r} is not valid: use true or false.")
    number("saturation", 0, 0.5)
    number("saturation_windows", 1, integer=True)
    number("grad_factor", 1)
    number("diversity_n", 0, integer=True)
    if 0 < h.diversity_n < 2:
        raise GanlabError("health.diversity_n=1 is not valid: pairwise distances need at least 2 samples (or 0: off).")
    number("diversity_drop", 0, 1)
    number("metric_regress", 0)


class Watchdog:
    def __init__(self, cfg_health, monitor_metric: str | None = None, monitor_mode: str = "min",
                 loss: str | None = None):
        self.cfg, self.loss = cfg_health, loss
        self.enabled = bool(cfg_health.enabled)
        self.saturation, self.sat_windows = float(cfg_health.saturation), int(cfg_health.saturation_windows)
        self.grad_factor, self.div_drop = float(cfg_health.grad_factor), float(cfg_health.diversity_drop)
        self.regress = float(cfg_health.metric_regress)
        self.monitor_metric, self.monitor_mode = monitor_metric, monitor_mode
        self.sat_run = 0                                  # windows in a row with D saturated
        self.grad_history: dict[str, list[float]] = {}    # per optimizer, the norms of earlier windows
        self.best_diversity: float | None = None
        self.best_metric: dict[str, float] = {}
        self.active: dict[str, bool] = {}                 # kind (or kind:tag) -> reported and not yet cleared
        self.findings: list[dict] = []

    # -------------------------------------------------------------------------------- checks
    def _edge(self, key: str, bad: bool) -> bool:
        """True when a condition has just set in (report it); a condition that clears is re-armed."""
        was = self.active.get(key, False)
        self.active[key] = bad
        return bad and not was

    def _finding(self, step: int, kind: str, message: str, value: float | None = None) -> dict:
        f = {"step": int(step), "kind": kind, "message": message}
        if value is not None:
            f["value"] = float(value)
        self.findings.append(f)
        return f

    def window(self, step: int, values: dict[str, float]) -> list[dict]:
        """The findings of one logging window's means (`values`, as logged)."""
        if not self.enabled:
            return []
        out = []
        real, fake = _pair(values)
        if real is not None:
            saturated = real >= 1 - self.saturation and fake <= self.saturation
            self.sat_run = self.sat_run + 1 if saturated else 0
            if self._edge("d_saturated", self.sat_run >= self.sat_windows):
                out.append(self._finding(step, "d_saturated", (
                    f"D is saturated: D(x) {real:.4f} and D(G(z)) {fake:.2g} for {self.sat_run} logging windows in a "
                    "row; " + ("the minimax G's gradients vanish (loss=nonsaturating keeps them). " if self.loss == "minimax"
                               else "G learns from a D that rejects every sample, so its gradients are large and unstable "
                                    "(Arjovsky & Bottou 2017). ")
                    + "Weaken D: lower optimizer.lr_d, fewer train.n_critic, tricks.label_smoothing=0.1 or "
                    "tricks.instance_noise=0.1."), fake))
        for tag, norm in values.items():
            if not (tag.startswith("Grad/") and tag.endswith("_norm")):
                continue
            history = self.grad_history.setdefault(tag, [])
            median = statistics.median(history) if len(history) >= 3 else None
            exploding = not math.isfinite(norm) or (median is not None and median > 0 and norm > self.grad_factor * median)
            if self._edge(f"grad_exploding:{tag}", exploding):
                out.append(self._finding(step, "grad_exploding", (
                    f"{tag} is {norm:.3g}, {norm / median:.3g}x its median of {median:.3g} over the earlier windows"
                    if median and math.isfinite(norm) else f"{tag} is {norm}") + (
                    ": the updates are exploding. Lower the learning rate (optimizer.lr), add a gradient penalty "
                    "(penalty=gp or r1) or spectral norm (model.spectral_norm=true)."), norm))
            if math.isfinite(norm):
                history.append(norm)
                del history[:-50]
        div = values.get("Health/diversity")
        if div is not None and math.isfinite(div):
            best = self.best_diversity
            ref = None if best is None else min(best, 1.0)  # samples spread wider than the data are no collapse
            dropped = ref is not None and div < self.div_drop * ref
            if self._edge("diversity_drop", dropped):
                out.append(self._finding(step, "diversity_drop", (
                    f"sample diversity fell to {div:.3g} of the real data's, {div / ref:.2g}x its best of "
                    f"{ref:.3g}: G is collapsing onto few outputs (mode collapse). Try a gradient penalty, "
                    "minibatch stddev (model.minibatch_stddev=4), a lower lr or the Wasserstein loss."), div))
            self.best_diversity = div if best is None else max(best, div)
        return out

    def metrics(self, step: int, scores: dict[str, float]) -> list[dict]:
        """The findings of one evaluation (`scores`: Metrics/<name> -> value)."""
        if not self.enabled:
            return []
        tag = self.monitor_metric or next((t for t in DEFAULT_WATCHED if t in scores), None)
        if tag is None or tag not in scores or not math.isfinite(scores[tag]):
            return []
        value, name = float(scores[tag]), tag.split("/", 1)[-1]
        higher = (self.monitor_mode == "max") if self.monitor_metric else name in HIGHER_IS_BETTER
        best = self.best_metric.get(tag)
        out = []
        if best is not None:
            worse_by = (best - value) if higher else (value - best)
            regressed = worse_by > self.regress * max(abs(best), 1e-12)
            if self._edge(f"metric_regression:{tag}", regressed):
                out.append(self._finding(step, "metric_regression", (
                    f"{tag} is {value:.4g}, worse than its best of {best:.4g} by {100 * worse_by / max(abs(best), 1e-12):.0f}%: "
                    "training is moving away from its best state (checkpoints/best.pt keeps it with eval.monitor)."),
                    value))
        if best is None or (value > best if higher else value < best):
            self.best_metric[tag] = value
        return out

    def rollback(self, step: int, message: str) -> dict:
        return self._finding(step, "rollback", message)

    # ---------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"sat_run": self.sat_run, "grad_history": {k: list(v) for k, v in self.grad_history.items()},
                "best_diversity": self.best_diversity, "best_metric": dict(self.best_metric),
                "active": dict(self.active), "findings": [dict(f) for f in self.findings]}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.sat_run = int(state.get("sat_run", 0))
        self.grad_history = {k: list(v) for k, v in state.get("grad_history", {}).items()}
        self.best_diversity = state.get("best_diversity")
        self.best_metric = dict(state.get("best_metric", {}))
        self.active = dict(state.get("active", {}))
        self.findings = [dict(f) for f in state.get("findings", [])]


def _pair(values: dict[str, float]) -> tuple[float | None, float | None]:
    """D's mean probabilities on real and generated samples in this window, when the loss has them."""
    real, fake = values.get("D/D(x)"), values.get("D/D(G(z))")
    if real is None or fake is None or not (math.isfinite(real) and math.isfinite(fake)):
        return None, None
    return real, fake


def summary(findings: list[dict], limit: int = 4) -> str:
    """A few words for `ganlab report`: each kind with the step it first set in, and how often."""
    if not findings:
        return ""
    by_kind: dict[str, list[int]] = {}
    for f in findings:
        by_kind.setdefault(f["kind"], []).append(int(f["step"]))
    parts = [f"{k}@{steps[0]}" + (f" (x{len(steps)})" if len(steps) > 1 else "") for k, steps in by_kind.items()]
    return ", ".join(parts[:limit]) + (" ..." if len(parts) > limit else "")

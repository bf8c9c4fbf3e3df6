"""ONE training loop for every model family: the run machinery.

The loop knows nothing about what the networks are. A family's objective (ganlab/objectives/)
declares its nets, optimizers, EMA copies and phases, and computes each phase's loss; the loop
does everything else, the same way for every family:

    for step in steps:                              # a step = one pass over the objective's phases
        for phase in phases (due at this step):     # e.g. D x n_critic, then G; lazy phases every k
            freeze all nets but phase.trains
            loss, logs = phase.loss(step, runtime)  # runtime: next batch, autocast, loss scale
            zero_grad; scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); phase.after()
            sum logs on the device; remember the first NaN/Inf loss on the device
        update the EMA copies of the nets that were updated
        log (one host read) / sample (every train.sample_every steps, and when the objective asks:
        e.g. PG-GAN at the end of each resolution) / evaluate / checkpoint / stop on a signal or the budget

Nothing is copied to the host between logging steps. Checkpoints hold the step, the config, every
RNG, the data position, each net (`<name>`), EMA copy (`<name>_ema`), optimizer (`opt_<name>`)
and grad scaler (`scaler_<name>`), and the objective's own state (`objective`): a resume continues
bit-identically on the same machine.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ganlab import distributed
from ganlab.checkpoint import load_checkpoint, load_latest, save_checkpoint, write_checkpoints
from ganlab.config import validate
from ganlab.data import build_batches
from ganlab.data.sources import build_source
from ganlab.device import resolve_device
from ganlab.errors import DivergedError, GanlabError
from ganlab.health import Watchdog, diversity
from ganlab.metrics.scorer import Scorer, real_samples
from ganlab.monitor import Monitor
from ganlab.runinfo import write_status
from ganlab.objectives import DEFAULT as DEFAULT_OBJECTIVE
from ganlab.objectives import build_objective
from ganlab.viz import image_grid

log = logging.getLogger("ganlab")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Every RNG the loop draws from, in plain containers (loads with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# What must match for a checkpoint to be continued: the model and the data (where the data live may move).
_DATASET_LOCATION_KEYS = ("root", "download", "system_dirs")


def _differences(old: dict, new: dict, prefix: str) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if prefix == "dataset" and key in _DATASET_LOCATION_KEYS:
            continue
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def check_resumable(saved: dict, cfg: DictConfig, path: Path) -> None:
    now = OmegaConf.to_container(cfg, resolve=True)
    saved_model = {"objective": DEFAULT_OBJECTIVE, **saved.get("model", {})}  # runs from before model.objective
    diffs = _differences(saved_model, now["model"], "model")
    diffs += _differences(saved.get("dataset", {}), now["dataset"], "dataset")
    if diffs:
        raise GanlabError(
            f"cannot resume {path}: it was trained with another model or dataset ("
            + "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
            + "). Resume with the run's own model= and dataset=, or start a new run."
        )


def _checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> tuple[dict | None, bool]:
    """(the checkpoint a run continues, or None for a new run; whether a resume=auto run is finished).

    resume=true / a run dir: the run's newest intact checkpoint (last.pt, else the newest numbered
    one that loads, with a warning); resume=PATH.pt: that file; resume=auto: like true when the run
    dir holds a run, else a new run. A new run into a dir holding a checkpoint is refused."""
    ckpt_dir = run_dir / "checkpoints"
    resume = cfg.get("resume", False)
    auto = resume == "auto"
    if auto:  # continue this run dir's run if it has one (a requeued cluster job), else start one
        resume = (ckpt_dir / "last.pt").exists()
    if resume in (False, None, "false", ""):
        if (ckpt_dir / "last.pt").exists():
            raise GanlabError(f"{run_dir} already holds a run (checkpoints/last.pt); add resume=true to continue it, "
                              "or choose another hydra.run.dir so nothing is overwritten.")
        return None, False
    if resume in (True, "true"):
        if not (ckpt_dir / "last.pt").is_file():
            raise GanlabError(f"resume=true but {run_dir} holds no checkpoints/last.pt; pass hydra.run.dir=RUN_DIR of "
                              "the run to continue, or resume=PATH to a run dir or checkpoint.")
        state, path = load_latest(ckpt_dir)
    else:
        path = Path(str(resume)).expanduser()
        state, path = load_latest(path / "checkpoints") if path.is_dir() else (load_checkpoint(path), path)
    check_resumable(state["config"], cfg, path)
    if int(state["step"]) >= cfg.train.steps:
        if auto:  # a finished job run again (a sweep launched anew): nothing to do
            return state, True
        raise GanlabError(f"the run in {run_dir} is already at step {state['step']} (train.steps={cfg.train.steps}); "
                          f"pass a larger train.steps to continue it.")
    return state, False


class _StopSignals:
    """SIGTERM/SIGINT ask the loop to stop after the current step (checkpoint, clean exit 0);
    a second SIGINT interrupts at once.

    A cluster job's preemption signal (submitit's: SIGUSR2, or $SUBMITIT_PREEMPT_SIGNAL) is caught
    too when a handler for it is installed (submitit's requeues the job and exits): the loop stops
    after the step and writes a checkpoint, then `hand_on()` gives the signal to that handler, so
    the requeued job (`resume=auto`) loses no steps."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}
        self._chained: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
            preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper(), None)
            if preempt is not None and preempt not in self._old and callable(signal.getsignal(preempt)):
                self._old[preempt] = self._chained[preempt] = signal.signal(preempt, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received not in self._chained:  # a preemption, once received, is what hand_on() passes on
            self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

    def hand_on(self) -> None:
        """After the checkpoint: the preemption handler that was there runs (submitit: requeue, exit)."""
        if self.received in self._chained:
            self._chained[self.received](self.received, None)


def lr_factor(step: int, steps: int, decay_from: float) -> float:
    """Constant, then linear decay to 0 at the last step from step decay_from * steps on (the
    schedule of CycleGAN and of many 2D-mixture GANs: the late small steps sharpen the modes)."""
    start = decay_from * steps
    if step <= start:
        return 1.0
    return max(0.0, (steps - step) / max(steps - start, 1e-9))


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the parameters' current gradients (a device tensor: no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class _Runtime:
    """What the loop lends the objective's phases (ganlab.objectives.base.Runtime)."""

    def __init__(self, device: torch.device, batches, amp: str, channels_last: bool, scalers: dict):
        self.device, self._batches, self._channels_last, self._scalers = device, batches, channels_last, scalers
        self._amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def next_batch(self, n: int | None = None) -> tuple:
        batch = self._batches.next(n)
        if self._channels_last:
            batch = tuple(x.contiguous(memory_format=torch.channels_last) if torch.is_tensor(x) and x.dim() == 4 else x
                          for x in batch)
        return batch

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self._amp, enabled=self._amp is not None)

    def loss_scale(self, optimizer: str) -> torch.Tensor | None:
        scaler = self._scalers[optimizer]
        return scaler.scale(torch.ones((), device=self.device)) if scaler.is_enabled() else None


class _LogSums:
    """Each phase's logged scalars summed on the device over a logging window, and the first step
    whose loss was NaN/Inf (0: none), also on the device: read back once per window."""

    def __init__(self, device: torch.device):
        self.sums: dict[str, tuple[tuple[str, ...], torch.Tensor]] = {}
        self.counts: dict[str, int] = {}
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)

    def add(self, phase: str, step: int, loss: torch.Tensor, logs: dict, track_nan: bool,
            absorbed: torch.Tensor | None = None) -> None:
        values = torch.stack([v.detach() for v in logs.values()])
        if phase in self.sums:
            self.sums[phase][1].add_(values)
            self.counts[phase] += 1
        else:
            self.sums[phase], self.counts[phase] = (tuple(logs), values), 1
        if track_nan:
            bad = ~torch.isfinite(loss.detach())
            if absorbed is not None:
                bad = bad & ~absorbed
            self.first_bad.masked_fill_(self.first_bad.eq(0) & bad, step)

    def means(self) -> dict[str, float]:
        """The window's means, by tag (one host read), and a fresh window."""
        if not self.sums:
            return {}
        tags = [tag for names, _ in self.sums.values() for tag in names]
        values = torch.cat([sums / self.counts[phase] for phase, (_, sums) in self.sums.items()]).tolist()
        self.sums.clear()
        self.counts.clear()
        return dict(zip(tags, values))


_RESERVED_KEYS = ("step", "config", "rng", "data", "best", "objective", "health")


class _Run:
    """One run: the objective, its data and devices, the monitor, checkpoints and the evaluation hook."""

    def __init__(self, cfg: DictConfig, run_dir: Path, state: dict | None, hparams: dict | None):
        t = cfg.train
        self.cfg, self.run_dir, self.ckpt_dir, self.hparams = cfg, run_dir, run_dir / "checkpoints", hparams
        self.dist = distributed.state()  # torchrun: this rank and the world (ganlab.distributed); else 0 of 1
        self.main = self.dist.rank == 0  # rank 0 alone writes
        self.device = device = resolve_device(distributed.device_for(cfg.device))
        if t.threads is not None:
            torch.set_num_threads(int(t.threads))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        seed_everything(cfg.seed)

        self.source = source = build_source(cfg.dataset)
        self.objective = obj = build_objective(cfg, source, device)  # fails on unsupported pairs before data is read
        clash = [k for k in (*obj.nets, *[f"{n}_ema" for n in obj.ema], *[f"opt_{n}" for n in obj.optimizers],
                             *[f"scaler_{n}" for n in obj.optimizers]) if k in _RESERVED_KEYS]
        if clash:
            raise ValueError(f"{type(obj).__name__}: names {clash} clash with the checkpoint's own keys {_RESERVED_KEYS}")
        self.batches = build_batches(source, t.batch_size, cfg.seed, device, t.num_workers)
        obj.attach(self.batches)
        channels_last = (device.type == "cuda") if t.channels_last == "auto" else bool(t.channels_last)
        channels_last = channels_last and source.kind == "image"
        if channels_last:
            for net in (*obj.nets.values(), *(e.module for e in obj.ema.values())):
                net.to(memory_format=torch.channels_last)
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=t.amp == "fp16") for name in obj.optimizers}
        if self.dist.world > 1:  # torchrun: DDP for the nets the phases train (SyncBatchNorm first, train.sync_bn)
            if t.sync_bn:
                for net in obj.nets.values():
                    distributed.sync_batchnorm(net)
            obj.distribute(lambda net, find_unused: distributed.wrap(net, device, find_unused))
        if t.compile:  # the forward passes; a gradient penalty's double backward stays eager
            obj.compile()
        self.runtime = _Runtime(device, self.batches, t.amp, channels_last, self.scalers)
        self.base_lrs = {name: [group["lr"] for group in opt.param_groups] for name, opt in obj.optimizers.items()}
        self.opt_params = {name: [p for group in opt.param_groups for p in group["params"]]
                           for name, opt in obj.optimizers.items()}
        self.all_params = [p for net in obj.nets.values() for p in net.parameters()]
        self._trainable: tuple[str, ...] | None = None
        self.start_step, self.best = 0, {"step": None, "value": None, "monitor": cfg.eval.monitor}
        # the watchdog (ganlab.health) and train.on_nan=rollback's lowered learning rates, both checkpointed
        self.health = Watchdog(cfg.health, cfg.eval.monitor, cfg.eval.mode, cfg.loss.get("name"))
        self.lr_scale, self.rollbacks = 1.0, 0
        if state is not None:
            self.restore(state)

        # on resume, TensorBoard drops what the killed run logged after its checkpoint (no duplicate steps)
        self.budget_s = None if t.max_minutes is None else float(t.max_minutes) * 60.0  # train.max_minutes
        self.monitor = Monitor(run_dir, t.steps, t.progress, start_step=self.start_step, budget_s=self.budget_s,
                               enabled=self.main)
        verb = f"resuming at step {self.start_step}:" if self.start_step else "training"
        ranks = (f" | DDP over {self.dist.world} processes ({self.dist.backend}), {int(t.batch_size) // self.dist.world} "
                 f"samples each{', SyncBatchNorm' if t.sync_bn else ''}" if self.dist.world > 1 else "")
        if self.main:
            log.info(f"{verb} {cfg.model.name} on {source.name} {tuple(source.shape)} | {obj.describe()} | "
                     f"{obj.batch_description(int(t.batch_size))}{ranks} | device {device} | run dir {run_dir}")
        if not self.start_step:
            self.monitor.text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
            if source.kind in ("image", "unpaired"):
                self.monitor.image("Samples/real", image_grid(self.batches.preview(t.n_samples)), 0)

        ev = cfg.eval
        self.scorer, self.protocol, self.real_ref = None, {}, None
        if ev.every or source.kind == "points":
            _, real_ref, real_hist = real_samples(cfg.dataset, int(ev.n), cfg.seed + 3)
            self.real_ref = real_ref
            metrics = ev.metrics if isinstance(ev.metrics, str) else list(ev.metrics)
            self.scorer = Scorer(source, real_ref, metrics, ev.features, ev.inception_weights, device, real_hist)
            self.protocol = {**self.scorer.protocol, "n_fake": int(ev.n),
                             "generated_by": obj.sampler_description(),
                             "reference": {"dataset": source.name, "split": cfg.dataset.get("split", "sampled"),
                                           "seed": cfg.seed + 3}}
        self.logs = _LogSums(device)
        self.skip_nan, self.skipped, self.last = t.on_nan == "skip", 0, {}
        self.rollback_on = t.on_nan == "rollback"
        # Health/diversity: samples of fixed latents against as many real samples (their diversity, once)
        n_div = int(cfg.health.diversity_n) if cfg.health.enabled and obj.samples_from_noise else 0
        self.diversity_n, self.real_diversity = n_div, None
        if n_div:
            self.real_diversity = float(diversity(self.batches.preview(n_div)))
            if not self.real_diversity > 0:
                self.diversity_n = 0  # a data set of one repeated sample: nothing to compare with

    # ------------------------------------------------------------------------------- one step
    def train_step(self, step: int) -> None:
        """Every phase due at this step, then the EMA copies of the nets that were updated."""
        updated: set[str] = set()
        for phase in self.objective.phases:
            if step % phase.every:
                continue
            self._freeze_all_but(phase.trains)
            opt, scaler = self.objective.optimizers[phase.optimizer], self.scalers[phase.optimizer]
            self.objective.enter_phase(phase.trains)
            for _ in range(phase.repeats):
                loss, logs = phase.loss(step, self.runtime)
                opt.zero_grad(set_to_none=True)
                if self.skip_nan and not self._finite_everywhere(loss):  # train.on_nan=skip: a host sync per update
                    self.skipped += 1
                    continue
                scaler.scale(loss).backward()
                if self.dist.world > 1 and not phase.through_ddp:  # a regularizer DDP cannot reduce: one collective
                    distributed.all_reduce_grads(self.opt_params[phase.optimizer])
                scaler.step(opt)
                scale = scaler._scale.clone() if scaler.is_enabled() else None
                scaler.update()
                if phase.after is not None:
                    phase.after()
                # under fp16 an overflow (inf loss or grads) that the scaler absorbed, by skipping the step
                # and lowering its scale, is no divergence (gradient penalties of scaled scores overflow so)
                absorbed = None if scale is None else scaler._scale < scale
                self.logs.add(phase.name, step, loss, logs, track_nan=not self.skip_nan, absorbed=absorbed)
                updated.update(phase.trains)
            self.objective.leave_phase()
        for name, ema in self.objective.ema.items():
            if name in updated:
                ema.update(step)
        self.objective.after_step(step)

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """train.on_nan=skip: this update's loss is finite on every rank (all skip it together, or none does)."""
        finite = bool(torch.isfinite(loss))
        return finite if self.dist.world == 1 else distributed.agree([float(finite)], "min")[0] > 0

    def _freeze_all_but(self, trains: tuple[str, ...]) -> None:
        if trains != self._trainable:
            for name, net in self.objective.nets.items():
                net.requires_grad_(name in trains)
            self._trainable = trains

    def set_lr_factor(self, factor: float) -> None:
        """A Python float per step (train.lr_decay_from): no sync; only the rollbacks' lowering is checkpointed."""
        factor *= self.lr_scale
        for name, opt in self.objective.optimizers.items():
            for group, lr in zip(opt.param_groups, self.base_lrs[name]):
                group["lr"] = lr * factor

    # ------------------------------------------------------------ logging, sampling, evaluation
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
        if self.cfg.train.lr_decay_from is not None:
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

    # ------------------------------------------------------------------ checkpoints and resume
    def diverged(self, at_step: int) -> DivergedError:
        bad = int(self.logs.first_bad) or at_step
        where = (f"the last good checkpoint (step {self.last_ckpt_step}) is kept in {self.ckpt_dir}"
                 if self.last_ckpt_step else "no checkpoint had been written yet")
        tried = f" after {self.rollbacks} rollback(s) (train.max_rollbacks)" if self.rollbacks else ""
        return DivergedError(f"training diverged: a loss became NaN/Inf at step {bad}{tried}; {where}. Lower the "
                             "learning rate (optimizer.lr), change the loss, or set train.on_nan=skip or rollback.")

    def training_state(self, step: int) -> dict:
        # never write a diverged state (one sync, on checkpoint steps only)
        finite = torch.isfinite(torch.stack(torch._foreach_norm(self.all_params))).all() & (self.logs.first_bad == 0)
        if not bool(finite):
            raise self.diverged(step)
        obj = self.objective
        state = {
            **{name: net.state_dict() for name, net in obj.nets.items()},
            **{f"{name}_ema": ema.module.state_dict() for name, ema in obj.ema.items()},
            **{f"opt_{name}": opt.state_dict() for name, opt in obj.optimizers.items()},
            **{f"scaler_{name}": scaler.state_dict() for name, scaler in self.scalers.items()},
            "objective": obj.state_dict(), "step": step, "config": OmegaConf.to_container(self.cfg, resolve=True),
            "rng": rng_state(self.device), "data": self.batches.state_dict(), "best": dict(self.best),
            "health": {"watchdog": self.health.state_dict(), "lr_scale": self.lr_scale, "rollbacks": self.rollbacks},
        }
        if self.dist.world > 1:
            state["dist"] = distributed.checkpoint_record(state["objective"], self.all_params)
        return state

    def checkpoint(self, step: int) -> None:
        if self.dist.world > 1:  # BatchNorm's running statistics are each rank's own: all continue from rank 0's
            distributed.broadcast_buffers([*self.objective.nets.values(), *(e.module for e in self.objective.ema.values())])
        state = self.training_state(step)  # every rank: the checks and the gathers; rank 0 writes
        if self.main:
            write_checkpoints(state, self.ckpt_dir, step, int(self.cfg.train.keep_ckpts))
        self.last_ckpt_step = step

    def restore(self, state: dict) -> None:
        obj = self.objective
        try:
            for name, net in obj.nets.items():
                net.load_state_dict(state[name])
            for name, scaler in self.scalers.items():
                if state.get(f"scaler_{name}"):
                    scaler.load_state_dict(state[f"scaler_{name}"])
            health = state.get("health") or {}
            self.lr_scale, self.rollbacks = float(health.get("lr_scale", 1.0)), int(health.get("rollbacks", 0))
            for name, opt in obj.optimizers.items():
                opt.load_state_dict(state[f"opt_{name}"])
            self.set_lr_factor(1.0)  # the config's lr (x the rollbacks' lowering) wins over the saved one
            for name, ema in obj.ema.items():
                ema.module.load_state_dict(state.get(f"{name}_ema") or state[name])
            obj.load_state_dict(distributed.objective_state_for_this_rank(state))
            self.batches.load_state_dict(state["data"])
            set_rng_state(state["rng"], self.device)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise GanlabError(f"the checkpoint in {self.ckpt_dir} does not fit this run ({str(exc).splitlines()[0][:200]}); "
                              "resume with the run's own settings or start a new run.") from None
        self.start_step = self.last_ckpt_step = int(state["step"])
        self.best.update(state.get("best") or {})
        self.health.load_state_dict((state.get("health") or {}).get("watchdog"))
        note = distributed.resume_note(state)
        if note and self.main:
            log.warning(note)

    def roll_back(self, at_step: int, error: DivergedError) -> int:
        """train.on_nan=rollback: reload the last good checkpoint (or the start), lower every learning rate by
        train.rollback_lr_factor and go on; counted, logged and checkpointed. Returns the step reloaded."""
        t = self.cfg.train
        if self.rollbacks >= int(t.max_rollbacks):
            raise error
        bad = int(self.logs.first_bad) or at_step
        if self.last_ckpt_step and (self.ckpt_dir / "last.pt").is_file():
            state, where = load_checkpoint(self.ckpt_dir / "last.pt"), f"checkpoint step {self.last_ckpt_step}"
        else:
            self._initial_state.seek(0)
            state, where = torch.load(self._initial_state, weights_only=True), "the start (step 0)"
        keep = self.health.state_dict(), dict(self.best), self.rollbacks + 1, self.lr_scale * float(t.rollback_lr_factor)
        self.restore(state)
        self.health.load_state_dict(keep[0])
        self.best, self.rollbacks, self.lr_scale = keep[1], keep[2], keep[3]
        self.set_lr_factor(1.0)
        self.logs = _LogSums(self.device)
        self.monitor.restart(self.start_step)  # TensorBoard drops what the diverged stretch logged
        msg = (f"a loss became NaN/Inf at step {bad}: rolled back to {where} with every learning rate x{t.rollback_lr_factor} "
               f"(now x{self.lr_scale:.3g} of the config's; rollback {self.rollbacks} of at most {t.max_rollbacks})")
        self.report_health(bad, [self.health.rollback(bad, msg)])
        self.monitor.writer.add_scalar("Health/rollbacks", float(self.rollbacks), bad)
        return self.start_step

    def _stop_now(self, step: int, final: bool, stop: _StopSignals, t_start: float, log_every: int) -> tuple[bool, bool]:
        """(stop after this step, because the time budget ran out): on a signal or train.max_minutes; under
        torchrun the ranks decide together, on logging steps, so that all stop at the same step."""
        out_of_time = self.budget_s is not None and time.monotonic() - t_start >= self.budget_s
        if self.dist.world == 1:
            return stop.received is not None or out_of_time, out_of_time
        if step % log_every or final:
            return False, False
        signalled, out_of_time = (bool(v) for v in distributed.agree([float(stop.received is not None), float(out_of_time)]))
        return signalled or out_of_time, out_of_time

    def _final_words(self) -> str:
        """The final scores in a few words (2D data: the modes found, as the papers count them)."""
        m = {k.split("/", 1)[1]: v for k, v in self.last.items() if k.startswith("Metrics/")}
        if "modes_captured" in m:
            return (f": {m['modes_captured']:.0f} of {len(self.source.modes)} modes ({m['modes_captured_strict']:.0f} "
                    f"with >= 1% of the samples), {100 * m['high_quality']:.1f}% of samples on a mode"
                    + (f" (mode width {m['mode_spread']:.2f}x the data's)" if "mode_spread" in m else ""))
        return (": " + ", ".join(f"{k} {v:.4g}" for k, v in m.items())) if m else ""

    # ---------------------------------------------------------------------------- the loop
    def run(self, on_start=None) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if on_start is not None:
            on_start()
        # the loop's knobs as plain Python values: each DictConfig read costs microseconds, every step
        steps_total, log_every, sample_every, ckpt_every = int(t.steps), int(t.log_every), int(t.sample_every), int(t.ckpt_every)
        decay_from = None if t.lr_decay_from is None else float(t.lr_decay_from)
        eval_every = int(cfg.eval.every or 0) if self.scorer is not None else 0
        self.last_ckpt_step = self.start_step
        step = last_log_step = self.start_step
        # the clocks start here: the wall-clock budget and steps/s count training, not the set-up
        t_start = last_log_t = time.monotonic()
        cpu_start = time.process_time()  # this process's CPU time (every thread): what a CPU budget costs
        self.monitor.start_clock()
        if self.rollback_on and not self.start_step:  # train.on_nan=rollback before the first checkpoint: the start
            self._initial_state = io.BytesIO()
            torch.save(self.training_state(0), self._initial_state)
        with _StopSignals() as stop:
            try:
                while step < steps_total:
                    step += 1
                    if decay_from is not None:
                        self.set_lr_factor(lr_factor(step, steps_total, decay_from))
                    final = step == steps_total
                    try:
                        self.train_step(step)
                        self.monitor.tick(step)
                        stopping, out_of_time = self._stop_now(step, final, stop, t_start, log_every)
                        if step % log_every == 0 or final or stopping:
                            now = time.monotonic()
                            self.log_window(step, (step - last_log_step) / max(now - last_log_t, 1e-9))
                            last_log_t, last_log_step = now, step
                        if step % sample_every == 0 or final or stopping or self.objective.snapshot_due(step):
                            self.snapshot(step)
                        if eval_every and step % eval_every == 0 and not final:
                            self.evaluate(step)
                        if step % ckpt_every == 0 or final or stopping:
                            self.checkpoint(step)
                    except DivergedError as exc:
                        if not self.rollback_on:
                            raise
                        step = last_log_step = self.roll_back(step, exc)
                        last_log_t = time.monotonic()
                        continue
                    if stopping and not final:
                        why = (f"train.max_minutes={t.max_minutes} reached" if out_of_time
                               else f"{signal.Signals(stop.received).name} received" if stop.received is not None
                               else "another process received a stop signal")
                        self.monitor.message(f"{why} at step {step}/{t.steps}: stopped with a checkpoint in "
                                             f"{self.ckpt_dir / 'last.pt'}; continue with resume=true "
                                             f"hydra.run.dir={self.run_dir}")
                        break
                signalled = bool(distributed.agree([float(stop.received is not None)])[0])  # every rank, or none
                if self.scorer is not None and self.last and not signalled:  # the final samples, scored
                    metrics = self.evaluate(step)
                    self.last.update(metrics)
                    if self.main:
                        (self.run_dir / "metrics.json").write_text(json.dumps(
                            {"step": step, "metrics": metrics, "best": self.best,
                             "protocol": {**self.protocol, "generated_by": self.objective.sampler_description()}},
                            indent=2) + "\n")
                if self.hparams and self.last:
                    self.monitor.hparams(self.hparams, {k: v for k, v in self.last.items()
                                                        if k.startswith(("Loss/", "D/", "Metrics/"))})
            finally:
                self.monitor.close()

        elapsed = time.monotonic() - t_start
        if self.main:
            rolled = f" ({self.rollbacks} rollback(s), lrs x{self.lr_scale:.3g})" if self.rollbacks else ""
            log.info(f"done: step {step} in {elapsed:.1f}s{rolled}{self._final_words()}\n  run dir: {self.run_dir}\n"
                     f"  TensorBoard: tensorboard --logdir {self.run_dir / 'tb'}")
        result = {"step": step, "wall_s": elapsed, "cpu_s": time.process_time() - cpu_start,
                  **{k: v for k, v in self.last.items() if k.startswith(("Loss/", "D/", "Perf/", "Metrics/"))}}
        if self.skip_nan:
            result["skipped_updates"] = self.skipped
        if self.rollbacks:
            result["rollbacks"] = self.rollbacks
        if stop.received is not None:
            result["stopped_by"] = signal.Signals(stop.received).name
        stop.hand_on()
        return result


def train(cfg: DictConfig, run_dir: Path, hparams: dict | None = None, on_start=None) -> dict:
    """Train the objective `cfg` describes; TensorBoard logs and checkpoints go to run_dir. Returns final scalars.

    `hparams` (the chosen groups and swept values, from the CLI) go to TensorBoard's HParams tab with
    the final losses as its metrics. `on_start()` is called once every check has passed, right before
    the first step (the CLI records the run as running then)."""
    validate(cfg)
    run_dir = Path(run_dir)
    state, finished = _checkpoint_to_resume(cfg, run_dir)
    if finished:
        log.info(f"{run_dir} is finished (step {state['step']}, train.steps={cfg.train.steps}); nothing to do")
        return {"step": int(state["step"]), "wall_s": 0.0, "finished_before": True}
    run = _Run(cfg, run_dir, state, hparams)
    del state  # the restored weights live in the nets now; the loaded copy would only hold memory
    return run.run(on_start)

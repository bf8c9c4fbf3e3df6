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

The loop is `_Run.run`/`_Run._loop` below; its named parts live in ganlab/run/: resume (seeding, RNG
states, which checkpoint a run continues), runtime (the lr schedule, what phases borrow, the log sums),
signals (clean stops), reporting (logging windows, health, grids), evaluation (scores, best.pt), checkpoints
(state, cadence, restore, rollback); the train.* checks in ganlab/run/validate.py.

Nothing is copied to the host between logging steps. Checkpoints hold the step, the config, every
RNG, the data position, each net (`<name>`), EMA copy (`<name>_ema`), optimizer (`opt_<name>`)
and grad scaler (`scaler_<name>`), and the objective's own state (`objective`): a resume continues
bit-identically on the same machine.
"""

from __future__ import annotations

import io
import logging
import signal
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from ganlab import distributed
from ganlab.checkpoint import set_aside_future
from ganlab.config import validate
from ganlab.data import build_batches
from ganlab.data.sources import build_source
from ganlab.device import resolve_device
from ganlab.errors import DivergedError
from ganlab.health import Watchdog
from ganlab.monitor import Monitor
from ganlab.objectives import build_objective
from ganlab.run.checkpoints import Checkpoints
from ganlab.run.evaluation import Evaluation
from ganlab.run.reporting import Reporting
from ganlab.run.resume import checkpoint_to_resume, seed_everything
from ganlab.run.runtime import LogSums, Runtime, lr_factor  # noqa: F401 (lr_factor: ganlab.train's own name)
from ganlab.run.signals import StopSignals

log = logging.getLogger("ganlab")

_RESERVED_KEYS = ("step", "config", "rng", "data", "best", "objective", "health")


class _Run(Checkpoints, Reporting, Evaluation):
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
        self._build_objective()
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
        self.announce()
        self.setup_evaluation()
        self.logs = LogSums(device)
        self.skip_nan, self.skipped, self.last = t.on_nan == "skip", 0, {}
        self.rollback_on = t.on_nan == "rollback"
        self.setup_health()

    def _build_objective(self) -> None:
        """The data source, the family's objective, its batches, and how its nets run (channels-last, AMP loss
        scalers, DDP under torchrun, torch.compile); the parameter lists the loop keeps."""
        cfg, t, device = self.cfg, self.cfg.train, self.device
        self.source = source = build_source(cfg.dataset)
        self.objective = obj = build_objective(cfg, source, device)  # fails on unsupported pairs before data is read
        clash = [k for k in (*obj.nets, *[f"{n}_ema" for n in obj.ema], *[f"opt_{n}" for n in obj.optimizers],
                             *[f"scaler_{n}" for n in obj.optimizers]) if k in _RESERVED_KEYS]
        if clash:
            raise ValueError(f"{type(obj).__name__}: names {clash} clash with the checkpoint's own keys {_RESERVED_KEYS}")
        self.batches = build_batches(source, t.batch_size, cfg.seed, device, t.num_workers)
        obj.attach(self.batches)
        # auto: on for conv models on CUDA, unless compiled (inductor picks its own layouts; on an H200 with torch 2.11,
        # compile + channels_last failed in the conv backward's stride check, compile alone trained)
        channels_last = (device.type == "cuda" and not t.compile) if t.channels_last == "auto" else bool(t.channels_last)
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
        self.runtime = Runtime(device, self.batches, t.amp, channels_last, self.scalers)
        self.base_lrs = {name: [group["lr"] for group in opt.param_groups] for name, opt in obj.optimizers.items()}
        self.opt_params = {name: [p for group in opt.param_groups for p in group["params"]]
                           for name, opt in obj.optimizers.items()}
        self.all_params = [p for net in obj.nets.values() for p in net.parameters()]
        self._trainable: tuple[str, ...] | None = None

    # ------------------------------------------------------------------------------- one step
    def train_step(self, step: int) -> None:
        """Every phase due at this step, then the EMA copies of the nets that were updated."""
        updated: set[str] = set()
        for phase in self.objective.phases:
            if not phase.runs_at(step):
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

    def set_lr_factor(self, factor: float | dict[str, float]) -> None:
        """A Python float per step (train.lr_decay_from), or one per optimizer name (an objective's lr_schedule,
        e.g. LapGAN's levels counting their own epochs): no sync; only the rollbacks' lowering is checkpointed."""
        for name, opt in self.objective.optimizers.items():
            f = (factor[name] if isinstance(factor, dict) else factor) * self.lr_scale
            for group, lr in zip(opt.param_groups, self.base_lrs[name]):
                group["lr"] = lr * f

    def _stop_now(self, step: int, final: bool, stop: StopSignals, t_start: float, log_every: int) -> tuple[bool, bool]:
        """(stop after this step, because the time budget ran out): on a signal or train.max_minutes; under
        torchrun the ranks decide together, on logging steps, so that all stop at the same step."""
        out_of_time = self.budget_s is not None and time.monotonic() - t_start >= self.budget_s
        if self.dist.world == 1:
            return stop.received is not None or out_of_time, out_of_time
        if step % log_every or final:
            return False, False
        signalled, out_of_time = (bool(v) for v in distributed.agree([float(stop.received is not None), float(out_of_time)]))
        return signalled or out_of_time, out_of_time

    # ---------------------------------------------------------------------------- the loop
    def run(self, on_start=None) -> dict:
        if on_start is not None:
            on_start()
        self.last_ckpt_step = step = self.start_step
        # the clocks start here: the wall-clock budget and steps/s count training, not the set-up
        t_start = time.monotonic()
        cpu_start = time.process_time()  # this process's CPU time (every thread): what a CPU budget costs
        self.monitor.start_clock()
        if self.rollback_on and not self.start_step:  # train.on_nan=rollback before the first checkpoint: the start
            self._initial_state = io.BytesIO()
            torch.save(self.training_state(0), self._initial_state)
        with StopSignals() as stop:
            try:
                step = self._loop(stop, t_start)
                self._finish(step, stop)
            finally:
                self.monitor.close()
                self.objective.undistribute()
        return self._result(step, time.monotonic() - t_start, time.process_time() - cpu_start, stop)

    def _loop(self, stop: StopSignals, t_start: float) -> int:
        """Each step trains, then logs, samples, evaluates and checkpoints on their cadences, until train.steps,
        a stop signal or train.max_minutes; a divergence under train.on_nan=rollback goes back and on."""
        t = self.cfg.train
        # the loop's knobs as plain Python values: each DictConfig read costs microseconds, every step
        steps_total, log_every, sample_every, ckpt_every = int(t.steps), int(t.log_every), int(t.sample_every), int(t.ckpt_every)
        decay_from = None if t.lr_decay_from is None else float(t.lr_decay_from)
        schedule = self.objective.lr_schedule or (None if decay_from is None
                                                  else (lambda s: lr_factor(s, steps_total, decay_from)))
        eval_every = int(self.cfg.eval.every or 0) if self.scorer is not None else 0
        step = last_log_step = self.start_step
        last_log_t = t_start
        while step < steps_total:
            step += 1
            if schedule is not None:
                self.set_lr_factor(schedule(step))
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
                self._say_stopped(step, stop, out_of_time)
                break
        return step

    def _say_stopped(self, step: int, stop: StopSignals, out_of_time: bool) -> None:
        t = self.cfg.train
        why = (f"train.max_minutes={t.max_minutes} reached" if out_of_time
               else f"{signal.Signals(stop.received).name} received" if stop.received is not None
               else "another process received a stop signal")
        self.monitor.message(f"{why} at step {step}/{t.steps}: stopped with a checkpoint in {self.ckpt_dir / 'last.pt'}; "
                             f"continue with resume=true hydra.run.dir={self.run_dir}")

    def _finish(self, step: int, stop: StopSignals) -> None:
        """After the loop: the final samples scored (metrics.json) unless a signal stopped it, and the HParams."""
        signalled = bool(distributed.agree([float(stop.received is not None)])[0])  # every rank, or none
        if self.scorer is not None and self.last and not signalled:
            metrics = self.evaluate(step)
            self.last.update(metrics)
            self.write_metrics(step, metrics)
        if self.hparams and self.last:
            self.monitor.hparams(self.hparams, {k: v for k, v in self.last.items()
                                                if k.startswith(("Loss/", "D/", "Metrics/"))})

    def _result(self, step: int, elapsed: float, cpu_s: float, stop: StopSignals) -> dict:
        if self.main:
            rolled = f" ({self.rollbacks} rollback(s), lrs x{self.lr_scale:.3g})" if self.rollbacks else ""
            log.info(f"done: step {step} in {elapsed:.1f}s{rolled}{self._final_words()}\n  run dir: {self.run_dir}\n"
                     f"  TensorBoard: tensorboard --logdir {self.run_dir / 'tb'}")
        result = {"step": step, "wall_s": elapsed, "cpu_s": cpu_s,
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
    state, path, finished = checkpoint_to_resume(cfg, run_dir)
    if finished:
        log.info(f"{run_dir} is finished (step {state['step']}, train.steps={cfg.train.steps}); nothing to do")
        return {"step": int(state["step"]), "wall_s": 0.0, "finished_before": True}
    if state is not None:  # every rank has read its checkpoint before rank 0 moves the abandoned future aside
        distributed.barrier()
        if distributed.is_main():
            set_aside_future(run_dir / "checkpoints", int(state["step"]), path)
    run = _Run(cfg, run_dir, state, hparams)
    del state  # the restored weights live in the nets now; the loaded copy would only hold memory
    return run.run(on_start)

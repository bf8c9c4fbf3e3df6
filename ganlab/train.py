"""ONE training loop for every model family.

Per generator update: `train.n_critic` discriminator/critic updates, each on a fresh real batch and
a separate fake batch (never mixed, so BatchNorm sees pure batches), then one G update with D
frozen. Nothing is copied to the host between logging steps: running sums stay on the device.
"""

from __future__ import annotations

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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ganlab.checkpoint import load_checkpoint, save_checkpoint, write_checkpoints
from ganlab.config import validate
from ganlab.data import build_batches
from ganlab.data.sources import build_source
from ganlab.errors import DivergedError, GanlabError
from ganlab.losses import get_loss, get_penalty
from ganlab.evaluate import Scorer, real_samples
from ganlab.models import build_models, generate, resolve_backbone, sample_z
from ganlab.monitor import Monitor
from ganlab.tricks import EMA, add_instance_noise, clip_weights, d_targets, instance_noise_std, uses_label_tricks
from ganlab.viz import image_grid, scatter_image

log = logging.getLogger("ganlab")


def resolve_device(name: str) -> torch.device:
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GanlabError(f"device={name} was asked for but this machine has no CUDA device; use device=cpu or device=auto.")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise GanlabError(f"device={name}: there are only {torch.cuda.device_count()} CUDA devices; use device=cuda:0.")
    if name == "mps" and not has_mps:
        raise GanlabError("device=mps was asked for but MPS is not available here; use device=cpu or device=auto.")
    return torch.device(name)


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
    diffs = _differences(saved.get("model", {}), now["model"], "model")
    diffs += _differences(saved.get("dataset", {}), now["dataset"], "dataset")
    if diffs:
        raise GanlabError(
            f"cannot resume {path}: it was trained with another model or dataset ("
            + "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
            + "). Resume with the run's own model= and dataset=, or start a new run."
        )


def _resume_path(resume, run_dir: Path) -> Path:
    if resume is True:
        path = run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise GanlabError(
                f"resume=true but {run_dir} holds no checkpoints/last.pt; pass hydra.run.dir=RUN_DIR of the run "
                "to continue, or resume=PATH to a run dir or checkpoint."
            )
        return path
    path = Path(str(resume)).expanduser()
    return path / "checkpoints" / "last.pt" if path.is_dir() else path


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


def make_optimizers(opt_cfg: DictConfig, g: torch.nn.Module, d: torch.nn.Module, device: torch.device | None = None):
    """G and D optimizers from the `optimizer` group (`_partial_` target); lr_g/lr_d override lr (TTUR).

    `optimizer.fused: null` (the Adam configs' default) picks Adam's fused kernel (one kernel for all
    parameters, the step count kept on the device, and with fp16 the grad scaler's inf check folded
    in: no host sync per step) where it pays: on CUDA and the other accelerators always; on CPU for
    models without convolutions, where the optimizer step is a large share of a GAN step (MLP gan
    at MNIST size: 1.28x steps/s). CPU conv models keep the per-parameter loop, measured 4-6% faster
    there (wgan_gp 28px; dcgan even). `optimizer.fused=true|false` decides it by hand."""
    cfg = OmegaConf.to_container(opt_cfg, resolve=True)
    lr_g, lr_d = cfg.pop("lr_g", None), cfg.pop("lr_d", None)
    if cfg["_target_"] in ("torch.optim.Adam", "torch.optim.AdamW") and cfg.get("fused") is None:
        pays = device is not None and device.type in _fused_devices() and (
            device.type != "cpu" or not any(isinstance(m, torch.nn.modules.conv._ConvNd)
                                            for m in (*g.modules(), *d.modules())))
        cfg["fused"] = True if pays else None
    factory = instantiate(cfg)
    opt_g = factory(g.parameters(), lr=lr_g if lr_g is not None else cfg["lr"])
    opt_d = factory(d.parameters(), lr=lr_d if lr_d is not None else cfg["lr"])
    return opt_g, opt_d


def _fused_devices() -> tuple[str, ...]:
    """Device types with fused Adam kernels (a private torch helper; CUDA alone if it moves)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:
        return ("cuda",)


def lr_factor(step: int, steps: int, decay_from: float) -> float:
    """Constant, then linear decay to 0 at the last step from step decay_from * steps on (the
    schedule of CycleGAN and of many 2D-mixture GANs: the late small steps sharpen the modes)."""
    start = decay_from * steps
    if step <= start:
        return 1.0
    return max(0.0, (steps - step) / max(steps - start, 1e-9))


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """Global L2 norm of a module's current gradients (a device tensor: no sync)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def train(cfg: DictConfig, run_dir: Path, hparams: dict | None = None, on_start=None) -> dict:
    """Train G and D as `cfg` says; TensorBoard logs and checkpoints go to run_dir. Returns final scalars.

    `hparams` (the chosen groups and swept values, from the CLI) go to TensorBoard's HParams tab with
    the final losses as its metrics. `on_start()` is called once every check has passed, right before
    the first step (the CLI records the run as running then)."""
    validate(cfg)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    state = None
    resume = cfg.get("resume", False)
    auto = resume == "auto"
    if auto:  # continue this run dir's run if it has one (a requeued cluster job), else start one
        resume = (ckpt_dir / "last.pt").exists()
    if resume not in (False, None, "false", ""):
        path = _resume_path(True if resume in (True, "true") else resume, run_dir)
        state = load_checkpoint(path)
        check_resumable(state["config"], cfg, path)
        if int(state["step"]) >= cfg.train.steps:
            if auto:  # a finished job run again (a sweep launched anew): nothing to do
                log.info(f"{run_dir} is finished (step {state['step']}, train.steps={cfg.train.steps}); nothing to do")
                return {"step": int(state["step"]), "wall_s": 0.0, "finished_before": True}
            raise GanlabError(f"the run in {run_dir} is already at step {state['step']} (train.steps={cfg.train.steps}); "
                              f"pass a larger train.steps to continue it.")
    elif (ckpt_dir / "last.pt").exists():
        raise GanlabError(
            f"{run_dir} already holds a run (checkpoints/last.pt); add resume=true to continue it, "
            "or choose another hydra.run.dir so nothing is overwritten."
        )
    t, tricks = cfg.train, cfg.tricks
    device = resolve_device(cfg.device)
    if t.threads is not None:
        torch.set_num_threads(int(t.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    seed_everything(cfg.seed)

    source = build_source(cfg.dataset)
    backbone = resolve_backbone(cfg.model, source.kind)  # unsupported pairs fail before data is read
    g, d = build_models(cfg.model, source)
    g, d = g.to(device), d.to(device)
    loss, d_kw, g_kw = get_loss(cfg.loss)
    label_tricks = uses_label_tricks(tricks)
    if label_tricks and loss.targets is None:
        raise GanlabError(f"the label tricks (label_smoothing, noisy_labels, flip_labels) need a loss with targets "
                          f"(nonsaturating, minimax, least_squares), not loss={loss.name}.")
    penalty = get_penalty(cfg.penalty)
    if penalty is not None and cfg.model.d_norm == "batch":
        log.warning("a gradient penalty with BatchNorm in D: the per-sample penalty is ill-defined "
                    "with batch statistics (Gulrajani et al. 2017, sec. 4); consider model.d_norm=layer.")
    batches = build_batches(source, t.batch_size, cfg.seed, device, t.num_workers)
    opt_g, opt_d = make_optimizers(cfg.optimizer, g, d, device)
    base_lrs = [[group["lr"] for group in opt.param_groups] for opt in (opt_g, opt_d)]
    channels_last = (device.type == "cuda" and source.kind == "image") if t.channels_last == "auto" else bool(t.channels_last)
    if channels_last and source.kind == "image":
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    scaler_d = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    scaler_g = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    # torch.compile for the forward passes; the gradient penalty's double backward stays eager
    g_run = torch.compile(g) if t.compile else g
    d_run = torch.compile(d) if t.compile else d
    ema = EMA(g, float(tricks.ema)) if tricks.ema else None
    d_params = list(d.parameters())
    all_params = list(g.parameters()) + d_params
    real_target, fake_target = (1.0, 0.0) if not loss.targets else (
        d_kw.get(loss.targets[0], 1.0), d_kw.get(loss.targets[1], 0.0))

    start_step, resumed_best = 0, {}
    if state is not None:
        try:
            g.load_state_dict(state["generator"])
            d.load_state_dict(state["discriminator"])
            for key, scaler in (("scaler_d", scaler_d), ("scaler_g", scaler_g)):
                if state.get(key):
                    scaler.load_state_dict(state[key])
            for opt, key in ((opt_g, "opt_g"), (opt_d, "opt_d")):
                lrs = [group["lr"] for group in opt.param_groups]  # the config's lr wins over the saved one
                opt.load_state_dict(state[key])
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"] = lr
            if ema is not None:
                ema.module.load_state_dict(state.get("generator_ema") or state["generator"])
            batches.load_state_dict(state["data"])
            set_rng_state(state["rng"], device)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise GanlabError(f"the checkpoint in {ckpt_dir} does not fit this run ({str(exc).splitlines()[0][:200]}); "
                              "resume with the run's own settings or start a new run.") from None
        start_step = int(state["step"])
        resumed_best = state.get("best") or {}
        del state

    z_dim, batch = int(cfg.model.z_dim), int(t.batch_size)
    n_classes = g.num_classes if g.conditional else None
    # one fixed latent grid for every snapshot, so grids are comparable over time (2D: >= 1000
    # points); conditional models get one row per class
    if source.kind == "points":
        n_fixed = max(t.n_samples, 1000)
    elif n_classes:
        n_fixed = max(1, t.n_samples // n_classes) * n_classes
    else:
        n_fixed = t.n_samples
    fixed_z = sample_z(n_fixed, z_dim, torch.Generator().manual_seed(cfg.seed + 1)).to(device)
    fixed_y = (torch.arange(n_fixed) * n_classes // n_fixed).to(device) if n_classes else None  # row k: class k

    def fake_labels(n: int):
        return torch.randint(n_classes, (n,), device=device) if n_classes else None

    # on resume, TensorBoard drops what the killed run logged after its checkpoint (no duplicate steps)
    monitor = Monitor(run_dir, t.steps, t.progress, start_step=start_step)
    verb = f"resuming at step {start_step}:" if start_step else "training"
    log.info(f"{verb} {cfg.model.name} ({backbone}{', conditional' if n_classes else ''}) on {source.name} "
             f"{tuple(source.shape)} | loss {loss.name}{' + ' + cfg.penalty.name if penalty else ''} | "
             f"n_critic {t.n_critic} | batch {batch} | device {device} | G {sum(p.numel() for p in g.parameters()):,} "
             f"params, D {sum(p.numel() for p in d.parameters()):,} params | run dir {run_dir}")
    if not start_step:
        monitor.text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
        if source.kind == "image":
            monitor.image("Samples/real", image_grid(batches.preview(t.n_samples)), 0)

    names = ["Loss/D", "Loss/G", "D/real", "D/fake", "Loss/penalty"]
    acc = torch.zeros(len(names), device=device)
    zero = torch.zeros((), device=device)
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # first step with a NaN/Inf loss (0: none)
    skip_nan = t.on_nan == "skip"
    skipped = 0
    acc_steps, last_log_t, last_log_step = 0, time.monotonic(), start_step
    last_ckpt_step = start_step
    budget_s = None if t.max_minutes is None else float(t.max_minutes) * 60.0
    t_start = time.monotonic()
    last: dict = {}
    step = start_step

    def diverged(at_step: int) -> DivergedError:
        bad = int(first_bad) or at_step
        where = (f"the last good checkpoint (step {last_ckpt_step}) is kept in {ckpt_dir}" if last_ckpt_step
                 else "no checkpoint had been written yet")
        return DivergedError(f"training diverged: a loss became NaN/Inf at step {bad}; {where}. Lower the learning "
                           "rate (optimizer.lr), change the loss, or set train.on_nan=skip.")

    def training_state(at_step: int) -> dict:
        # never write a diverged state (one sync, on checkpoint steps only)
        finite = torch.isfinite(torch.stack(torch._foreach_norm(all_params))).all() & (first_bad == 0)
        if not bool(finite):
            raise diverged(at_step)
        return {
            "generator": g.state_dict(), "discriminator": d.state_dict(),
            "generator_ema": ema.module.state_dict() if ema else None,
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": at_step,
            "scaler_d": scaler_d.state_dict(), "scaler_g": scaler_g.state_dict(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "rng": rng_state(device), "data": batches.state_dict(),
            "best": dict(best),
        }

    def checkpoint(at_step: int) -> None:
        nonlocal last_ckpt_step
        write_checkpoints(training_state(at_step), ckpt_dir, at_step, int(t.keep_ckpts))
        last_ckpt_step = at_step

    def evaluate_now(at_step: int) -> dict:
        """Score eval.n samples of G (EMA when kept); keep checkpoints/best.pt by eval.monitor."""
        fake, _ = generate(ema.module if ema else g, int(ev.n), device=device,
                           generator=torch.Generator().manual_seed(cfg.seed + 4))
        scores = {f"Metrics/{k}": float(v) for k, v in scorer(fake.float()).items() if k not in ("n_samples", "n_modes", "n_classes")}
        monitor.scalars(at_step, scores)
        if ev.monitor:
            if ev.monitor not in scores:
                raise GanlabError(f"eval.monitor={ev.monitor} is not among the metrics ({', '.join(scores)}).")
            value = scores[ev.monitor]
            if best.get("value") is None or (value < best["value"] if ev.mode == "min" else value > best["value"]):
                best.update(step=at_step, value=value, monitor=ev.monitor)
                save_checkpoint(training_state(at_step), ckpt_dir / "best.pt")
        return scores

    ev = cfg.eval
    scorer, protocol = None, {}
    if ev.every or source.kind == "points":
        _, real_ref, real_hist = real_samples(cfg.dataset, int(ev.n), cfg.seed + 3)
        metrics = ev.metrics if isinstance(ev.metrics, str) else list(ev.metrics)
        scorer = Scorer(source, real_ref, metrics, ev.features, ev.inception_weights, device, real_hist)
        protocol = {**scorer.protocol, "n_fake": int(ev.n), "generated_by": "EMA weights" if ema else "raw weights",
                    "reference": {"dataset": source.name, "split": cfg.dataset.get("split", "sampled"),
                                  "seed": cfg.seed + 3}}
    best: dict = {"step": None, "value": None, "monitor": ev.monitor}
    if start_step and resumed_best:
        best.update(resumed_best)

    def samples_to_tb(at_step: int) -> None:
        sampler = ema.module if ema else g
        was_training = sampler.training
        sampler.eval()
        with torch.no_grad():
            fake = sampler(fixed_z, fixed_y)
        sampler.train(was_training)
        if source.kind == "points":
            monitor.image("Samples/scatter", scatter_image(fake, source.modes), at_step)
        else:
            monitor.image("Samples/fixed_z", image_grid(fake, nrow=n_fixed // n_classes if n_classes else None), at_step)

    def finite_or_skip(value: torch.Tensor) -> bool:
        """train.on_nan=skip: True when the update may go ahead (a host sync, every step)."""
        nonlocal skipped
        if skip_nan and not bool(torch.isfinite(value)):
            skipped += 1
            return False
        return True

    if on_start is not None:
        on_start()
    # the loop's knobs as plain Python values: each DictConfig read costs microseconds, every step
    steps_total, n_critic = int(t.steps), int(t.n_critic)
    clip_d = None if t.clip_d is None else float(t.clip_d)
    decay_from = None if t.lr_decay_from is None else float(t.lr_decay_from)
    log_every, sample_every, ckpt_every = int(t.log_every), int(t.sample_every), int(t.ckpt_every)
    eval_every = int(ev.every or 0)
    noisy = float(tricks.instance_noise) > 0
    # the clocks start here: the wall-clock budget (train.max_minutes) and steps/s count training,
    # not the set-up above (data loading, the evaluation reference and its features)
    t_start = last_log_t = time.monotonic()
    with _StopSignals() as stop:
        try:
            for step in range(start_step + 1, steps_total + 1):
                noise_std = instance_noise_std(step, tricks, steps_total) if noisy else 0.0
                if decay_from is not None:  # a Python float per step: no sync, nothing to checkpoint
                    factor = lr_factor(step, steps_total, decay_from)
                    for opt, lrs in zip((opt_g, opt_d), base_lrs):
                        for group, lr in zip(opt.param_groups, lrs):
                            group["lr"] = lr * factor
                step_ok = True
                # ---- discriminator / critic: n_critic updates on separate real and fake batches
                d.requires_grad_(True)
                for _ in range(n_critic):
                    real, y_real = batches.next()
                    if channels_last:
                        real = real.contiguous(memory_format=torch.channels_last)
                    y_real = y_real if n_classes else None
                    y_fake = fake_labels(batch)
                    with autocast():
                        with torch.no_grad():  # fp32 in, like the reals: one compiled D graph for both
                            fake = g_run(sample_z(batch, z_dim, device=device), y_fake).to(real.dtype)
                        real_in, fake_in = add_instance_noise(real, noise_std), add_instance_noise(fake, noise_std)
                        d_real, d_fake = d_run(real_in, y_real).float(), d_run(fake_in, y_fake).float()
                    if label_tricks:
                        rt, ft = d_targets(batch, tricks, real_target, fake_target, device=device)
                        loss_d = loss.d(d_real, d_fake, **{**d_kw, loss.targets[0]: rt, loss.targets[1]: ft})
                    else:
                        loss_d = loss.d(d_real, d_fake, **d_kw)
                    pen = zero
                    if penalty is not None:
                        fn, weight, kw = penalty
                        scale = scaler_d.scale(torch.ones((), device=device)) if scaler_d.is_enabled() else None
                        with autocast():
                            pen = fn(lambda x: d(x, y_real), real_in, fake_in, scale=scale, **kw)
                        loss_d = loss_d + weight * pen
                    opt_d.zero_grad(set_to_none=True)
                    if not finite_or_skip(loss_d):
                        step_ok = False
                        continue
                    scaler_d.scale(loss_d).backward()
                    scaler_d.step(opt_d)
                    scaler_d.update()
                    if clip_d is not None:
                        clip_weights(d_params, clip_d)

                # ---- generator: one update, D frozen (its grads from the last D step stay for logging)
                d.requires_grad_(False)
                y_gen = fake_labels(batch)
                with autocast():
                    gen = add_instance_noise(g_run(sample_z(batch, z_dim, device=device), y_gen).float(), noise_std)
                    d_gen = d_run(gen, y_gen).float()
                loss_g = loss.g(d_gen, **g_kw)
                opt_g.zero_grad(set_to_none=True)
                if finite_or_skip(loss_g):
                    scaler_g.scale(loss_g).backward()
                    scaler_g.step(opt_g)
                    scaler_g.update()
                    if ema is not None:
                        ema.update()
                else:
                    step_ok = False

                if step_ok:
                    with torch.no_grad():
                        if loss.sigmoid:
                            real_score, fake_score = torch.sigmoid(d_real).mean(), torch.sigmoid(d_fake).mean()
                        else:
                            real_score, fake_score = d_real.mean(), d_fake.mean()
                        losses = torch.stack([loss_d.detach(), loss_g.detach(), real_score, fake_score, pen.detach()])
                        acc += losses
                        if not skip_nan:  # remember the first bad step, on the device
                            bad_now = (first_bad == 0) & ~torch.isfinite(losses[:2]).all()
                            first_bad = torch.where(bad_now, torch.full_like(first_bad, step), first_bad)
                    acc_steps += 1
                monitor.tick(step)

                final = step == steps_total
                out_of_time = budget_s is not None and time.monotonic() - t_start >= budget_s
                stopping = stop.received is not None or out_of_time
                if step % log_every == 0 or final or stopping:
                    if bool(first_bad):  # the one host sync per log window
                        raise diverged(step)
                    values = dict(zip(names, (acc / max(acc_steps, 1)).tolist()))
                    if penalty is None:
                        values.pop("Loss/penalty")
                    if loss.sigmoid:
                        values["D/D(x)"] = values.pop("D/real")
                        values["D/D(G(z))"] = values.pop("D/fake")
                    else:
                        values["D/critic_real"] = values.pop("D/real")
                        values["D/critic_fake"] = values.pop("D/fake")
                    values["Grad/D_norm"] = float(grad_norm(d))
                    values["Grad/G_norm"] = float(grad_norm(g))
                    if noise_std > 0:
                        values["Tricks/instance_noise_std"] = noise_std
                    if decay_from is not None:
                        values["Train/lr_g"] = opt_g.param_groups[0]["lr"]
                    if skip_nan:
                        values["Train/skipped_updates"] = float(skipped)
                    now = time.monotonic()
                    values["Perf/steps_per_s"] = (step - last_log_step) / max(now - last_log_t, 1e-9)
                    values["Perf/images_per_s"] = values["Perf/steps_per_s"] * batch * (2 * n_critic + 1)
                    if not acc_steps:  # every update of the window was skipped: no loss means to show
                        values = {k: v for k, v in values.items() if k.startswith(("Train/", "Perf/"))}
                    monitor.scalars(step, values)
                    last = values if acc_steps else last
                    acc.zero_()
                    acc_steps, last_log_t, last_log_step = 0, now, step
                if step % sample_every == 0 or final or stopping:
                    samples_to_tb(step)
                if scorer is not None and eval_every and step % eval_every == 0 and not final:
                    evaluate_now(step)
                if step % ckpt_every == 0 or final or stopping:
                    checkpoint(step)
                if stopping and not final:
                    why = (f"train.max_minutes={t.max_minutes} reached" if out_of_time
                           else f"{signal.Signals(stop.received).name} received")
                    monitor.message(f"{why} at step {step}/{t.steps}: stopped with a checkpoint in "
                                    f"{ckpt_dir / 'last.pt'}; continue with resume=true hydra.run.dir={run_dir}")
                    break
            if scorer is not None and last and stop.received is None:  # the final G, scored; metrics.json says how
                metrics = evaluate_now(step)
                last.update(metrics)
                (run_dir / "metrics.json").write_text(json.dumps(
                    {"step": step, "metrics": metrics, "best": best, "protocol": protocol}, indent=2) + "\n")
            if hparams and last:
                monitor.hparams(hparams, {k: v for k, v in last.items() if k.startswith(("Loss/", "D/", "Metrics/"))})
        finally:
            monitor.close()

    elapsed = time.monotonic() - t_start
    log.info(f"done: step {step} in {elapsed:.1f}s; TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    result = {"step": step, "wall_s": elapsed,
              **{k: v for k, v in last.items() if k.startswith(("Loss/", "D/", "Perf/", "Metrics/"))}}
    if skip_nan:
        result["skipped_updates"] = skipped
    if stop.received is not None:
        result["stopped_by"] = signal.Signals(stop.received).name
    stop.hand_on()
    return result

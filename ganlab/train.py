"""ONE training loop for every model family.

Per generator update: `train.n_critic` discriminator/critic updates, each on a fresh real batch and
a separate fake batch (never mixed, so BatchNorm sees pure batches), then one G update with D
frozen. Nothing is copied to the host between logging steps: running sums stay on the device.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ganlab.checkpoint import save_checkpoint
from ganlab.config import validate
from ganlab.data import build_batches
from ganlab.errors import GanlabError
from ganlab.losses import get_loss, get_penalty
from ganlab.models import build_models, resolve_backbone, sample_z
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


def make_optimizers(opt_cfg: DictConfig, g: torch.nn.Module, d: torch.nn.Module):
    """G and D optimizers from the `optimizer` group (`_partial_` target); lr_g/lr_d override lr (TTUR)."""
    cfg = OmegaConf.to_container(opt_cfg, resolve=True)
    lr_g, lr_d = cfg.pop("lr_g", None), cfg.pop("lr_d", None)
    factory = instantiate(cfg)
    opt_g = factory(g.parameters(), lr=lr_g if lr_g is not None else cfg["lr"])
    opt_d = factory(d.parameters(), lr=lr_d if lr_d is not None else cfg["lr"])
    return opt_g, opt_d


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """Global L2 norm of a module's current gradients (a device tensor: no sync)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _build_source(cfg: DictConfig):
    try:
        return instantiate(cfg.dataset)
    except MissingMandatoryValue:
        raise GanlabError(f"dataset={cfg.dataset.name} needs dataset.root=DIR (the folder that holds the data).") from None
    except Exception as exc:  # Hydra wraps errors raised inside the target
        cause = exc
        while cause is not None and not isinstance(cause, GanlabError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train G and D as `cfg` says; TensorBoard logs and checkpoints go to run_dir. Returns final scalars."""
    validate(cfg)
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if ckpt_path.exists():
        raise GanlabError(f"{run_dir} already holds a run (checkpoints/last.pt); choose another hydra.run.dir so nothing is overwritten.")
    t, tricks = cfg.train, cfg.tricks
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    source = _build_source(cfg)
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
    opt_g, opt_d = make_optimizers(cfg.optimizer, g, d)
    ema = EMA(g, float(tricks.ema)) if tricks.ema else None
    d_params = list(d.parameters())
    real_target, fake_target = (1.0, 0.0) if not loss.targets else (
        d_kw.get(loss.targets[0], 1.0), d_kw.get(loss.targets[1], 0.0))

    z_dim, batch = int(cfg.model.z_dim), int(t.batch_size)
    n_classes = g.num_classes if g.conditional else None
    # one fixed latent grid for every snapshot, so grids are comparable over time (2D: >= 1000
    # points); conditional models get one row per class
    fixed_gen = torch.Generator().manual_seed(cfg.seed + 1)
    if source.kind == "points":
        n_fixed = max(t.n_samples, 1000)
    elif n_classes:
        per_class = max(1, t.n_samples // n_classes)
        n_fixed = per_class * n_classes
    else:
        n_fixed = t.n_samples
    fixed_z = sample_z(n_fixed, z_dim, fixed_gen).to(device)
    fixed_y = None
    if n_classes:
        fixed_y = (torch.arange(n_fixed) * n_classes // n_fixed).to(device)  # sorted: row k is class k
    real_preview = None

    def fake_labels(n: int):
        return torch.randint(n_classes, (n,), device=device) if n_classes else None

    monitor = Monitor(run_dir, t.steps, t.progress)
    log.info(f"{cfg.model.name} ({backbone}{', conditional' if n_classes else ''}) on {source.name} "
             f"{tuple(source.shape)} | loss {loss.name}{' + ' + cfg.penalty.name if penalty else ''} | "
             f"n_critic {t.n_critic} | batch {batch} | device {device} | G {sum(p.numel() for p in g.parameters()):,} "
             f"params, D {sum(p.numel() for p in d.parameters()):,} params | run dir {run_dir}")
    monitor.text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")

    names = ["Loss/D", "Loss/G", "D/real", "D/fake", "Loss/penalty"]
    acc = torch.zeros(len(names), device=device)
    zero = torch.zeros((), device=device)
    acc_steps, last_log_t, last_log_step = 0, time.monotonic(), 0
    budget_s = None if t.max_minutes is None else float(t.max_minutes) * 60.0
    t_start = time.monotonic()
    last: dict = {}
    step = 0

    def checkpoint(at_step: int) -> None:
        if acc_steps and not bool(torch.isfinite(acc).all()):  # never overwrite a good checkpoint with NaNs
            raise GanlabError(
                f"training diverged: a loss became NaN/Inf before step {at_step}; lower the learning rate "
                f"(optimizer.lr) or change the loss. The last good checkpoint is kept in {ckpt_path.parent}."
            )
        save_checkpoint({
            "generator": g.state_dict(), "discriminator": d.state_dict(),
            "generator_ema": ema.module.state_dict() if ema else None,
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": at_step,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
            "data": batches.state_dict() if hasattr(batches, "state_dict") else {},
        }, ckpt_path)

    def samples_to_tb(at_step: int) -> None:
        nonlocal real_preview
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
            if real_preview is None:
                real_preview = batches.next()[0][: t.n_samples]
                monitor.image("Samples/real", image_grid(real_preview), at_step)

    try:
        for step in range(1, t.steps + 1):
            noise_std = instance_noise_std(step, tricks, t.steps)
            # ---- discriminator / critic: n_critic updates on separate real and fake batches
            d.requires_grad_(True)
            for _ in range(t.n_critic):
                real, y_real = batches.next()
                y_real = y_real if n_classes else None
                y_fake = fake_labels(batch)
                with torch.no_grad():
                    fake = g(sample_z(batch, z_dim, device=device), y_fake)
                real_in, fake_in = add_instance_noise(real, noise_std), add_instance_noise(fake, noise_std)
                d_real, d_fake = d(real_in, y_real), d(fake_in, y_fake)
                if label_tricks:
                    rt, ft = d_targets(batch, tricks, real_target, fake_target, device=device)
                    loss_d = loss.d(d_real, d_fake, **{**d_kw, loss.targets[0]: rt, loss.targets[1]: ft})
                else:
                    loss_d = loss.d(d_real, d_fake, **d_kw)
                pen = zero
                if penalty is not None:
                    fn, weight, kw = penalty
                    pen = fn(lambda x: d(x, y_real), real_in, fake_in, **kw)
                    loss_d = loss_d + weight * pen
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                if t.clip_d is not None:
                    clip_weights(d_params, float(t.clip_d))

            # ---- generator: one update, D frozen (its grads from the last D step stay for logging)
            d.requires_grad_(False)
            y_gen = fake_labels(batch)
            gen = add_instance_noise(g(sample_z(batch, z_dim, device=device), y_gen), noise_std)
            loss_g = loss.g(d(gen, y_gen), **g_kw)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if ema is not None:
                ema.update()

            with torch.no_grad():
                if loss.sigmoid:
                    real_score, fake_score = torch.sigmoid(d_real).mean(), torch.sigmoid(d_fake).mean()
                else:
                    real_score, fake_score = d_real.mean(), d_fake.mean()
                acc += torch.stack([loss_d.detach(), loss_g.detach(), real_score, fake_score, pen.detach()])
            acc_steps += 1
            monitor.tick(step)

            final = step == t.steps
            out_of_time = budget_s is not None and time.monotonic() - t_start >= budget_s
            if step % t.log_every == 0 or final or out_of_time:
                values = dict(zip(names, (acc / acc_steps).tolist()))  # the one host sync per log
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
                now = time.monotonic()
                values["Perf/steps_per_s"] = (step - last_log_step) / max(now - last_log_t, 1e-9)
                values["Perf/images_per_s"] = values["Perf/steps_per_s"] * batch * (2 * t.n_critic + 1)
                bad = [k for k in ("Loss/D", "Loss/G") if not math.isfinite(values[k])]
                monitor.scalars(step, values)
                last = values
                acc.zero_()
                acc_steps, last_log_t, last_log_step = 0, now, step
                if bad:
                    raise GanlabError(
                        f"training diverged: {' and '.join(bad)} became NaN/Inf by step {step}; lower the "
                        f"learning rate (optimizer.lr) or change the loss. The last good checkpoint is kept in {ckpt_path.parent}."
                    )
            if step % t.sample_every == 0 or final or out_of_time:
                samples_to_tb(step)
            if step % t.ckpt_every == 0 or final or out_of_time:
                checkpoint(step)
            if out_of_time and not final:
                monitor.message(f"train.max_minutes={t.max_minutes} reached at step {step}/{t.steps}: "
                                f"stopped with a checkpoint in {ckpt_path}")
                break
    finally:
        monitor.close()

    elapsed = time.monotonic() - t_start
    log.info(f"done: {step} steps in {elapsed:.1f}s; TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return {"step": step, "wall_s": elapsed, **{k: v for k, v in last.items() if k.startswith(("Loss/", "D/"))}}

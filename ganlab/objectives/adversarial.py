"""The canon's objective: one G, one D (gan, dcgan, wgan, wgan_gp, lsgan, sngan, cgan, the
conditional switch, every trick and penalty).

A step is `train.n_critic` D updates, each on a fresh real batch and a separate fake batch (never
mixed, so BatchNorm sees pure batches), then one G update with D frozen (phases "D" and "G").
`tricks.diff_augment` augments every image D sees, real and fake, in both phases (DiffAugment).
With `model.pack` m > 1, D scores packs of m reals or m fakes (PacGAN, Lin et al. 2018); a penalty
then treats a pack as D's one input (its interpolates mix real and fake packs).
WGAN's weight clipping runs after each D update; instance noise follows a pure schedule of the step.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ganlab import distributed
from ganlab.data.sources import build_source
from ganlab.distributed import local_batch
from ganlab.errors import GanlabError
from ganlab.losses import d_score_logs, get_loss, get_penalty
from ganlab.models import build_models, d_pack, generate, resolve_backbone, sample_z
from ganlab.objectives.base import Objective, Phase, Runtime, generator_weights
from ganlab.optim import make_optimizers
from ganlab.tricks import (SelfEnsemble, Snapshots, add_instance_noise, clip_weights, d_targets, describe_ensemble,
                           describe_truncation, diff_augment, instance_noise_std, jacobian_truncation, make_emas,
                           parse_diff_augment, self_ensemble, snapshot_net, uses_label_tricks)
from ganlab.viz import image_grid, scatter_image

log = logging.getLogger("ganlab")


class Adversarial(Objective):
    def __init__(self, cfg, source, device: torch.device):
        super().__init__()
        t, tricks = cfg.train, cfg.tricks
        self.backbone = resolve_backbone(cfg.model, source.kind)  # unsupported pairs fail before data is read
        g, d = build_models(cfg.model, source)
        g, d = g.to(device), d.to(device)
        self.loss_fn, self.d_kw, self.g_kw = get_loss(cfg.loss)
        self.label_tricks = uses_label_tricks(tricks)
        if self.label_tricks and self.loss_fn.targets is None:
            raise GanlabError(f"the label tricks (label_smoothing, noisy_labels, flip_labels) need a loss with targets "
                              f"(nonsaturating, minimax, least_squares), not loss={self.loss_fn.name}.")
        self.penalty = get_penalty(cfg.penalty)
        self.penalty_name = cfg.penalty.name
        mixers = [what for what, on in (("BatchNorm", cfg.model.d_norm == "batch"),
                                        ("minibatch discrimination", cfg.model.get("minibatch_disc", 0))) if on]
        if self.penalty is not None and mixers:
            log.warning(f"a gradient penalty with {' and '.join(mixers)} in D: the per-sample penalty is ill-defined "
                        "when D's score of a sample depends on the rest of its batch (Gulrajani et al. 2017, sec. 4)"
                        + ("; consider model.d_norm=layer." if "BatchNorm" in mixers else "."))
        opt_g, opt_d = make_optimizers(cfg.optimizer, g, d, device)
        self.nets = {"generator": g, "discriminator": d}
        self.optimizers = {"g": opt_g, "d": opt_d}
        self.ema = make_emas(tricks, self.nets, ["generator"])
        self.snapshots = Snapshots.of(tricks)
        self._ensemble_cache: tuple[tuple[int, ...], list] = ((), [])
        self._step = 0

        self.source, self.device, self.tricks = source, device, tricks
        self.steps_total = int(t.steps)
        self.batch, self.z_dim, self.n_critic = local_batch(int(t.batch_size)), int(cfg.model.z_dim), int(t.n_critic)
        self.n_classes = g.num_classes if g.conditional else None
        self.pack_size = int(cfg.model.pack)
        if self.batch % self.pack_size:
            raise GanlabError(f"model.pack={self.pack_size} needs a batch that splits into packs: this process's batch "
                              f"is {self.batch}; set train.batch_size to a multiple of {self.pack_size} "
                              f"(times the number of processes under torchrun).")
        self.pack = d_pack(cfg.model, source)  # D's input: packs of m separate reals or fakes (PacGAN)
        self.augment_ops = parse_diff_augment(tricks.get("diff_augment"))
        if self.augment_ops and source.kind != "image":
            raise GanlabError(f"tricks.diff_augment augments images; {source.name} holds {source.kind}. "
                              "Set tricks.diff_augment=null.")
        self.noisy = float(tricks.instance_noise) > 0
        targets = self.loss_fn.targets
        self.real_target, self.fake_target = (1.0, 0.0) if not targets else (
            self.d_kw.get(targets[0], 1.0), self.d_kw.get(targets[1], 0.0))
        self.d_params = list(d.parameters())
        clip = None if t.clip_d is None else float(t.clip_d)
        self.feature_matching = float(tricks.get("feature_matching") or 0.0)
        # D's inputs per step: n_critic real and fake batches, G's batch (and a real one for feature matching)
        self.images_per_step = self.batch * (2 * self.n_critic + 1 + (self.feature_matching > 0))
        self.phases = (
            Phase("D", "d", ("discriminator",), self.d_loss, repeats=self.n_critic,
                  after=(lambda: clip_weights(self.d_params, clip)) if clip is not None else None),
            Phase("G", "g", ("generator",), self.g_loss),
        )
        # one fixed latent grid for every snapshot, so grids are comparable over time (2D: >= 1000
        # points); conditional models get one row per class
        if source.kind == "points":
            self.n_fixed = max(t.n_samples, 1000)
        elif self.n_classes:
            self.n_fixed = max(1, t.n_samples // self.n_classes) * self.n_classes
        else:
            self.n_fixed = t.n_samples
        self.fixed_z = sample_z(self.n_fixed, self.z_dim, torch.Generator().manual_seed(cfg.seed + 1)).to(device)
        self.fixed_y = ((torch.arange(self.n_fixed) * self.n_classes // self.n_fixed).to(device)
                        if self.n_classes else None)  # row k: class k

    # ------------------------------------------------------------------------------ the phases
    def _noise_std(self, step: int) -> float:
        return instance_noise_std(step, self.tricks, self.steps_total) if self.noisy else 0.0

    def d_input(self, x: Tensor, noise_std: float) -> Tensor:
        """What D sees of a batch: DiffAugment'ed (if on), instance noise (if on), then packed (if model.pack > 1)."""
        return self.pack(add_instance_noise(diff_augment(x, self.augment_ops), noise_std))

    def _fake_labels(self, n: int) -> Tensor | None:
        return distributed.randint_rows(self.n_classes, n, device=self.device) if self.n_classes else None

    def d_loss(self, step: int, rt: Runtime):
        """D on a real batch and a separate fake batch (+ the penalty, if any)."""
        g, d, loss, batch = self.fwd["generator"], self.fwd["discriminator"], self.loss_fn, self.batch
        noise_std = self._noise_std(step)
        real, y_real = rt.next_batch()
        y_real = y_real if self.n_classes else None
        y_fake = self._fake_labels(batch)
        with rt.autocast():
            with torch.no_grad():  # fp32 in, like the reals: one compiled D graph for both
                fake = g(sample_z(batch, self.z_dim, device=self.device), y_fake).to(real.dtype)
            real_in, fake_in = self.d_input(real, noise_std), self.d_input(fake, noise_std)
            d_real, d_fake = d(real_in, y_real).float(), d(fake_in, y_fake).float()
        if self.label_tricks:  # one target per D input: per sample, or per pack
            real_t, fake_t = d_targets(batch // self.pack_size, self.tricks, self.real_target, self.fake_target,
                                       device=self.device)
            loss_d = loss.d(d_real, d_fake, **{**self.d_kw, loss.targets[0]: real_t, loss.targets[1]: fake_t})
        else:
            loss_d = loss.d(d_real, d_fake, **self.d_kw)
        logs = {}
        if self.penalty is not None:
            fn, weight, kw = self.penalty
            raw_d = self.nets["discriminator"]  # the double backward stays eager
            with rt.autocast():
                pen = fn(lambda x: raw_d(x, y_real), real_in, fake_in, scale=rt.loss_scale("d"), **kw)
            loss_d = loss_d + weight * pen
            logs["Loss/penalty"] = pen
        return loss_d, {"Loss/D": loss_d, **logs, **d_score_logs(loss, d_real, d_fake)}

    def g_loss(self, step: int, rt: Runtime):
        """G through the frozen D, on a fresh fake batch (with tricks.feature_matching, also D's features of a
        fresh real batch: G's loss gains the squared distance between the two batches' mean features)."""
        y_gen = self._fake_labels(self.batch)
        d, noise_std = self.fwd["discriminator"], self._noise_std(step)
        with rt.autocast():
            gen = self.fwd["generator"](sample_z(self.batch, self.z_dim, device=self.device), y_gen).float()
            if not self.feature_matching:
                d_gen = d(self.d_input(gen, noise_std), y_gen).float()
            else:
                d_gen, h_gen = d(self.d_input(gen, noise_std), y_gen, features=True)
                d_gen = d_gen.float()
                real, y_real = rt.next_batch()
                with torch.no_grad():
                    _, h_real = d(self.d_input(real, noise_std), y_real if self.n_classes else None, features=True)
        loss_g = self.loss_fn.g(d_gen, **self.g_kw)
        if not self.feature_matching:
            return loss_g, {"Loss/G": loss_g}
        fm = (h_real.float().mean(0) - h_gen.float().mean(0)).square().mean()
        return loss_g + self.feature_matching * fm, {"Loss/G": loss_g, "Loss/feature_matching": fm}

    # ---------------------------------------------------------------------- reporting, sampling
    def describe(self) -> str:
        g, d = self.nets["generator"], self.nets["discriminator"]
        fm = f" + feature matching x {self.feature_matching:g}" if self.feature_matching else ""
        return (f"{self.backbone}{', conditional' if self.n_classes else ''}"
                f"{f', D on packs of {self.pack_size}' if self.pack_size > 1 else ''} | loss "
                f"{self.loss_fn.name}{' + ' + self.penalty_name if self.penalty else ''}"
                f"{fm} | n_critic {self.n_critic} | "
                f"G {sum(p.numel() for p in g.parameters()):,} params, D {sum(p.numel() for p in d.parameters()):,} params")

    def scalars(self, step: int) -> dict[str, float]:
        std = self._noise_std(step)
        return {"Tricks/instance_noise_std": std} if std > 0 else {}

    def after_step(self, step: int) -> None:
        self._step = step
        if self.snapshots is not None:
            self.snapshots.take(step, self.nets["generator"])

    def state_dict(self) -> dict:
        return {"snapshots": self.snapshots.state_dict(), "step": self._step} if self.snapshots is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.snapshots is not None:
            self.snapshots.load_state_dict(state.get("snapshots"))
            self._step = int(state.get("step", 0))

    def sampler(self):
        """What makes the samples: the EMA or raw G, or the self-ensemble; Jacobian-truncated when
        tricks.jacobian_truncation > 0 (its threshold measured on the G of this call)."""
        return jacobian_truncation(self._weights_sampler(), float(self.tricks.get("jacobian_truncation") or 0))

    def _weights_sampler(self):
        if self.snapshots is None:
            return self.ema["generator"].module if self.ema else self.nets["generator"]
        g, members = self.nets["generator"], self.snapshots.members(self._step)
        key = tuple(s for s, _ in members)
        if key != self._ensemble_cache[0]:  # copies of G made once per new snapshot, not per call
            old = dict(zip(self._ensemble_cache[0], self._ensemble_cache[1]))
            nets = [old[s] if s in old else snapshot_net(g, w) for s, w in members]
            self._ensemble_cache = (key, nets)
        return SelfEnsemble([*self._ensemble_cache[1], g], [*key, self._step]) if members else g

    def sampler_description(self) -> str:
        if self.snapshots is not None:
            steps = [s for s, _ in self.snapshots.members(self._step)] + [self._step]
            text = (f"{describe_ensemble(steps)} (tricks.self_ensemble={self.snapshots.size}, "
                    f"every {self.snapshots.every} steps)")
        else:
            text = super().sampler_description()
        return _truncated(text, self.tricks)

    def snapshot(self, step: int) -> dict[str, Tensor]:
        g = self.sampler()
        was_training = g.training
        g.eval()
        with torch.no_grad():
            fake = g(self.fixed_z, self.fixed_y)
        g.train(was_training)
        if self.source.kind == "points":
            return {"Samples/scatter": scatter_image(fake, self.source.modes)}
        return {"Samples/fixed_z": image_grid(fake, nrow=self.n_fixed // self.n_classes if self.n_classes else None)}

    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        return generate(self.sampler(), n, device=self.device, generator=generator)[0]

    @classmethod
    def load_generator(cls, cfg, state: dict, ema: bool, device):
        """The run's sampler: with tricks.self_ensemble the mixture of the saved snapshots and the raw G
        (`ema` then means "the run's sampler"; false: the raw G alone), else the EMA or raw G."""
        source = build_source(cfg.dataset)  # sources read no data until asked to
        g, _ = build_models(cfg.model, source)
        members = cls._saved_members(cfg, state, ema)
        g.load_state_dict(state["generator"] if members is not None else generator_weights(state, ema))
        sampler = self_ensemble(members or [], g, int(state["step"])).to(device).eval()
        return jacobian_truncation(sampler, float(cfg.tricks.get("jacobian_truncation") or 0))

    @staticmethod
    def _saved_members(cfg, state: dict, ema: bool) -> list[tuple[int, dict]] | None:
        """The snapshots that join the raw G of `state` in its run's sampler (none yet early in a run); None when
        the run has no self-ensemble or `ema` is false (the EMA or raw G alone)."""
        snaps = Snapshots.of(cfg.tricks)
        if snaps is None or not ema:
            return None
        snaps.load_state_dict((state.get("objective") or {}).get("snapshots"))
        return snaps.members(int(state["step"]))

    @classmethod
    def describe_checkpoint_sampler(cls, cfg, state: dict, ema: bool) -> str:
        members = cls._saved_members(cfg, state, ema)
        if members is None:
            return _truncated(super().describe_checkpoint_sampler(cfg, state, ema), cfg.tricks)
        return _truncated(describe_ensemble([*(s for s, _ in members), int(state["step"])]), cfg.tricks)


def _truncated(text: str, tricks) -> str:
    """A sampler's description, with its Jacobian truncation (tricks.jacobian_truncation) when on."""
    fraction = float(tricks.get("jacobian_truncation") or 0)
    return f"{text}, {describe_truncation(fraction)}" if fraction else text

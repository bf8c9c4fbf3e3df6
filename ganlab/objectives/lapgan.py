"""LapGAN's objective (Denton et al. 2015): one GAN per level of the Laplacian pyramid, trained jointly.

Each level k has its own G_k, D_k, optimizers ("g<k>", "d<k>") and phases ("D<k>" then "G<k>", finest
level first). The authors trained the levels as separate runs (one script per scale, each drawing its
own examples); here they train side by side, and every phase draws its own real batch, so that each
level sees the data stream it would see alone. A level builds what it needs on the device: the coarsest
level K judges the low-pass image I_K (K halvings of the batch); a finer level k judges the real
residual h_k = I_k - up(down(I_k)) against G_k's residual, both paired with the same low-pass
condition l = up(down(I_k)), the way the paper trains each level on real low-pass inputs. Labels
(model.conditional=true) are the batch's.

As the authors' training code (cifar/train/*adversarial.lua): D's batch is train.batch_size reals and
as many fakes, and its loss the BCE's mean over that mixed batch (half the lab's sum of the two means;
no batch norm anywhere, so mixing or not changes nothing else); G's batch is twice that (their 128
against D's 64 + 64); SGD with momentum, the learning rate divided by (1 + model.lr_decay) and the
momentum raised by model.momentum_step (up to model.momentum_max) at each epoch of the data
(optimizer=sgd_lapgan: the paper's 0.02, 0.5, 4e-5, 0.0008 and 0.8), times train.lr_decay_from's linear
decay to 0 when it is set; model.lrs gives each level its own lr
(the authors' one --learningRate per scale's script). Loss and penalty: the configured ones (the paper: the
GAN loss, no penalty).
"""

from __future__ import annotations

from functools import partial

import math

import torch
from omegaconf import OmegaConf
from torch import Tensor

from ganlab.data.sources import build_source
from ganlab.distributed import local_batch
from ganlab.errors import GanlabError
from ganlab.losses import d_score_logs, get_loss, get_penalty
from ganlab.models import generate, sample_z
from ganlab.models import lapgan as lap
from ganlab.models.progressive import to_full_size
from ganlab.objectives.base import Objective, Phase, Runtime, generator_weights
from ganlab.optim import make_optimizers
from ganlab.run.runtime import lr_factor
from ganlab.tricks import make_emas, uses_label_tricks
from ganlab.viz import image_grid


def _num_classes(cfg, source) -> int | None:
    if not cfg.model.conditional:
        return None
    if not getattr(source, "num_classes", None):
        raise GanlabError(f"model.conditional=true needs a labelled dataset; {source.name} has no labels. Use mnist, "
                          "fashion_mnist or cifar10, or model.conditional=false.")
    return int(source.num_classes)


def _per_level(key: str, value, levels: int, valid, what: str, example: str, null_gives: str) -> list:
    """model.<key>'s list of one value per level, finest first, each passing `valid` (a bool is no number);
    one clear error otherwise."""
    values = list(value)
    if len(values) != levels or not all(not isinstance(v, bool) and valid(v) for v in values):
        raise GanlabError(f"model.{key}={values} is not valid: give {what} per level, finest first ({levels} of them, "
                          f"e.g. {example}), or model.{key}=null for {null_gives}.")
    return values


def _level_optimizers(opt_cfg, lrs, levels: int) -> list:
    """The optimizer config of each level, finest first: optimizer.* with its lr replaced by model.lrs[k]
    when model.lrs is given (the authors trained each scale with its own script and --learningRate)."""
    if lrs is None:
        return [opt_cfg] * levels
    lrs = _per_level("lrs", lrs, levels, lambda v: isinstance(v, (int, float)) and v > 0, "one learning rate > 0",
                     "[0.02,0.1,0.1]", "optimizer.lr at every level")
    if opt_cfg.get("lr_g") is not None or opt_cfg.get("lr_d") is not None:
        raise GanlabError("model.lrs sets each level's learning rate for its G and D; drop optimizer.lr_g / "
                          "optimizer.lr_d, or use model.lrs=null.")
    resolved = OmegaConf.to_container(opt_cfg, resolve=True)
    return [OmegaConf.create({**resolved, "lr": float(lr)}) for lr in lrs]


def _level_steps(value, levels: int) -> list[int]:
    """How many updates (D then G) each level makes per training step, finest first (model.level_steps; null:
    one each). The levels are independent GANs (the authors trained each in its own script, for as long as
    it took), so a cheap coarse level can take several updates in the time of one update of the 32 px level."""
    if value is None:
        return [1] * levels
    return _per_level("level_steps", value, levels, lambda v: isinstance(v, int) and v >= 1, "one whole number >= 1",
                      "[1,2,2]", "one update each")


def residual_grid(h: Tensor, nrow: int | None = None) -> Tensor:
    """Signed residuals for display: 0 is mid-grey, +-(the grid's largest |h|) white and black."""
    return image_grid(h / h.abs().amax().clamp_min(1e-8), nrow)


class LapGAN(Objective):
    def __init__(self, cfg, source, device: torch.device):
        super().__init__()
        m, t, tricks = cfg.model, cfg.train, cfg.tricks
        if source.kind != "image":
            raise GanlabError(f"model={m.name} needs images (it models their Laplacian pyramid); use mnist, "
                              "fashion_mnist, cifar10, stacked_mnist or image_folder.")
        if uses_label_tricks(tricks) or float(tricks.instance_noise) > 0:
            raise GanlabError(f"model={m.name} does not use the label tricks or instance noise; drop those tricks.* "
                              "overrides.")
        self.n_classes = _num_classes(cfg, source)
        gens, discs = lap.build(m, tuple(source.shape), self.n_classes)
        self.levels, self.top = len(gens), len(gens) - 1
        self.loss_fn, self.d_kw, self.g_kw = get_loss(cfg.loss)
        self.penalty, self.penalty_name = get_penalty(cfg.penalty), cfg.penalty.name
        self.device, self.z_dim, self.batch = device, int(m.z_dim), local_batch(int(t.batch_size))
        self.global_batch = int(t.batch_size)
        n_critic = int(t.n_critic)
        level_opts = _level_optimizers(cfg.optimizer, m.get("lrs"), len(gens))
        self.level_steps = _level_steps(m.get("level_steps"), len(gens))
        phases = []
        for k, (g, d) in enumerate(zip(gens, discs)):
            g, d = g.to(device), d.to(device)
            self.nets[f"generator_{k}"], self.nets[f"discriminator_{k}"] = g, d
            self.optimizers[f"g{k}"], self.optimizers[f"d{k}"] = make_optimizers(level_opts[k], g, d, device)
            phases += [Phase(f"D{k}", f"d{k}", (f"discriminator_{k}",), partial(self.d_loss, k), repeats=n_critic),
                       Phase(f"G{k}", f"g{k}", (f"generator_{k}",), partial(self.g_loss, k))] * self.level_steps[k]
        self.ema = make_emas(tricks, self.nets, [f"generator_{k}" for k in range(len(gens))])
        self.phases = tuple(phases)
        self.images_per_step = self.batch * (2 * n_critic + 2) * sum(self.level_steps)
        self.data_size = 0  # the training data's size (attach), for the epochs of the lr and momentum schedule
        self.lr_schedule = self._epoch_schedule(m, int(t.batch_size), t.get("lr_decay_from"), int(t.steps))
        n = int(t.n_samples)
        self.n_fixed = max(1, n // self.n_classes) * self.n_classes if self.n_classes else n
        self.fixed_z = sample_z(self.n_fixed, self.z_dim, torch.Generator().manual_seed(cfg.seed + 1)).to(device)
        self.fixed_y = ((torch.arange(self.n_fixed) * self.n_classes // self.n_fixed).to(device)
                        if self.n_classes else None)
        self.seed = int(cfg.seed)

    def _epoch_schedule(self, m, global_batch: int, decay_from=None, steps: int = 0):
        """The paper's per-epoch schedule as a function of the step (an epoch of level k: the data once through
        its D's real half-batches, model.level_steps[k] of them a step): each level's lr factor
        1 / (1 + lr_decay)^epoch, and each SGD optimizer's momentum set to min(m0 + epoch x momentum_step,
        momentum_max); times train.lr_decay_from's linear decay to 0 over the last part of train.steps when
        that is set (an anneal for a run of a few epochs, where the paper's per-epoch decay has not begun).
        Returns {optimizer name: lr factor}; None when there is nothing to schedule."""
        decay, m_step, m_max = (float(m.get(k, d)) for k, d in (("lr_decay", 0.0), ("momentum_step", 0.0),
                                                                 ("momentum_max", 0.0)))
        for key, value in (("lr_decay", decay), ("momentum_step", m_step)):
            if value < 0:
                raise GanlabError(f"model.{key}={value} is not valid: give a number >= 0 (the paper: 4e-5 and 0.0008).")
        starts = {name: [g.get("momentum", 0.0) for g in opt.param_groups] for name, opt in self.optimizers.items()}
        anneal = None if decay_from is None else partial(lr_factor, steps=steps, decay_from=float(decay_from))
        if not decay and not m_step:
            return anneal
        level_of = {f"{net}{k}": k for k in range(self.levels) for net in "gd"}  # the optimizers' names

        def schedule(step: int) -> dict[str, float]:
            per_epoch = math.ceil(max(1, self.data_size) / global_batch)
            epochs = [(step - 1) * n // per_epoch for n in self.level_steps]
            for name, opt in self.optimizers.items():
                for group, m0 in zip(opt.param_groups, starts[name]):
                    if "momentum" in group and m_step:
                        group["momentum"] = max(m0, min(m0 + epochs[level_of[name]] * m_step, m_max))
            last = 1.0 if anneal is None else anneal(step)
            return {name: (1.0 + decay) ** -epochs[k] * last for name, k in level_of.items()}

        return schedule

    def attach(self, batches) -> None:
        """G's batch (twice D's) is checked against the data now, and the data's size kept for the epochs."""
        batches.check(2 * self.global_batch, "LapGAN's G batch (2 x train.batch_size, as the authors' code)")
        self.data_size = batches.size

    # ------------------------------------------------------------------------------ the phases
    def level_data(self, k: int, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """What level k trains on, from a real batch: (I_K, None) at the top; (h_k, l_k) below, with
        I_k = k halvings of x, l_k = up(down(I_k)) and h_k = I_k - l_k."""
        for _ in range(k):
            x = lap.down(x)
        if k == self.top:
            return x, None
        low = lap.up(lap.down(x))
        return x - low, low

    def _fake(self, k: int, l: Tensor | None, y: Tensor | None, n: int) -> Tensor:
        g = self.fwd[f"generator_{k}"]
        if k == self.top:
            return g(sample_z(n, self.z_dim, device=self.device), None, y)
        return g(lap.noise_planes(l), l, y)

    def _batch(self, rt: Runtime, n: int | None = None):
        x, y = rt.next_batch(n)
        return x, (y if self.n_classes else None)

    def d_loss(self, k: int, step: int, rt: Runtime):
        x, y = self._batch(rt)
        real, l = self.level_data(k, x)
        d, loss = self.fwd[f"discriminator_{k}"], self.loss_fn
        with rt.autocast():
            with torch.no_grad():
                fake = self._fake(k, l, y, x.shape[0]).to(real.dtype)
            d_real, d_fake = d(real, l, y).float(), d(fake, l, y).float()
        loss_d = 0.5 * loss.d(d_real, d_fake, **self.d_kw)  # the mean over the mixed batch of reals and fakes
        logs = {}
        if self.penalty is not None:
            fn, weight, kw = self.penalty
            raw_d = self.nets[f"discriminator_{k}"]  # the double backward stays eager
            with rt.autocast():
                pen = fn(lambda h: raw_d(h, l, y), real, fake, scale=rt.loss_scale(f"d{k}"), **kw)
            loss_d = loss_d + weight * pen
            logs[f"Loss/penalty_{k}"] = pen
        return loss_d, {f"Loss/D_{k}": loss_d, **logs,
                        **{f"{tag}_{k}": v for tag, v in d_score_logs(loss, d_real, d_fake).items()}}

    def g_loss(self, k: int, step: int, rt: Runtime):
        x, y = self._batch(rt, 2 * self.batch)
        _, l = self.level_data(k, x)
        with rt.autocast():
            fake = self._fake(k, l, y, x.shape[0])
            score = self.fwd[f"discriminator_{k}"](fake.float(), l, y).float()
        loss_g = self.loss_fn.g(score, **self.g_kw)
        return loss_g, {f"Loss/G_{k}": loss_g}

    # ---------------------------------------------------------------------- reporting, sampling
    def describe(self) -> str:
        count = lambda prefix: sum(p.numel() for name, net in self.nets.items() if name.startswith(prefix)  # noqa: E731
                                   for p in net.parameters())
        top = self.nets[f"generator_{self.top}"].shape[-1]
        return (f"Laplacian pyramid, {self.levels} levels ({' -> '.join(str(top * 2 ** i) for i in range(self.levels))} "
                f"px){', conditional' if self.n_classes else ''} | loss {self.loss_fn.name}"
                f"{' + ' + self.penalty_name if self.penalty else ''} | G {count('generator'):,} params, "
                f"D {count('discriminator'):,} params in all")

    def sampler(self) -> lap.LapSampler:
        pick = lambda k: self.ema[f"generator_{k}"].module if self.ema else self.nets[f"generator_{k}"]  # noqa: E731
        return lap.LapSampler([pick(k) for k in range(self.levels)])

    def snapshot(self, step: int) -> dict[str, Tensor]:
        """The composed images of the fixed latents (Samples/fixed_z), and per level on the way down its
        low-pass input up(I~_{k+1}), its generated residual and the image so far (upsampled to the full size)."""
        g = self.sampler()
        was_training = g.training
        g.eval()
        torch.manual_seed(self.seed + 5)  # the finer levels' noise planes (the loop samples aside from training)
        trace: list = []
        with torch.no_grad():
            out = {"Samples/fixed_z": image_grid(g(self.fixed_z, self.fixed_y, trace=trace))}
        g.train(was_training)
        size = trace[-1][3].shape[-1]
        nrow = self.n_fixed // self.n_classes if self.n_classes else None
        for k, low, h, x in trace:
            out[f"Samples/level_{k}/image"] = image_grid(to_full_size(x, size).clamp(-1, 1), nrow)
            if h is not None:
                out[f"Samples/level_{k}/lowpass"] = image_grid(to_full_size(low, size), nrow)
                out[f"Samples/level_{k}/residual"] = residual_grid(to_full_size(h, size), nrow)
        return out

    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        return generate(self.sampler(), n, device=self.device, generator=generator)[0]

    @classmethod
    def load_generator(cls, cfg, state: dict, ema: bool, device):
        source = build_source(cfg.dataset)  # sources read no data until asked to
        gens, _ = lap.build(cfg.model, tuple(source.shape), _num_classes(cfg, source))
        for k, g in enumerate(gens):
            g.load_state_dict(generator_weights({"generator": state[f"generator_{k}"],
                                                 "generator_ema": state.get(f"generator_{k}_ema")}, ema))
        return lap.LapSampler(gens).to(device).eval()

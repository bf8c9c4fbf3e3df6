"""model=optimal_d: the canon's theory as an experiment (experiment=optimal_d).

G is FIXED and its density known: the law of `model.g_scale * X + model.g_shift` with X from the
dataset's Gaussian mixture (dataset=mix1d, ring8, grid25). Each step trains

- D with the GAN value function (the minimax/non-saturating D loss: they share it), whose optimum
  is D*(x) = p_r / (p_r + p_g) (Goodfellow et al. 2014, Prop. 1), and
- (model.critic=true) a Wasserstein critic with the one-sided Lipschitz penalty of WGAN-LP (Petzka et al.
  2018; weight model.critic_penalty). WGAN-GP's two-sided penalty was tried first: in 1D it pins the
  critic's slope to +-1 before the critic has found which way p_g lies, and flipping the slope costs
  the penalty at slope 0: experiment=optimal_d's critic ended at the WRONG sign (E_r f - E_g f = -0.47,
  W_1 ~ +0.5) with it.

Evaluations (eval.every, and at the end) compare them with the closed forms (ganlab.metrics.theory):
Metrics/d_error_max, js vs js_from_v, the G losses' gradients w.r.t. G's position with the trained
nets and at D*, w1 vs w1_critic. `Theory/D_vs_Dstar` in TensorBoard plots D against D*. A sweep over
model.g_shift (`ganlab train -m experiment=optimal_d model.g_shift=...`) shows the minimax
gradient vanishing as the supports separate (`ganlab report` puts the runs side by side;
scripts/results_theory.py draws the figures of docs/results.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ganlab import distributed
from ganlab.distributed import local_batch
from ganlab.errors import GanlabError
from ganlab.losses import bce_d, gradient_penalty
from ganlab.metrics.theory import Densities, expectation_points, theory_metrics
from ganlab.models.mlp import mlp_features
from ganlab.objectives.base import Objective, Phase, Runtime
from ganlab.optim import make_optimizer
from ganlab.tricks import uses_label_tricks


class FixedGenerator(nn.Module):
    """G(z) = scale * (mu_k + std * z[1:]) + shift, the mode k picked by z[0] through the normal CDF:
    a generator (of a Gaussian z, like every G here) whose density is known in closed form."""

    conditional = False
    num_classes = None

    def __init__(self, modes: Tensor, std: float, scale: float, shift: Tensor):
        super().__init__()
        self.register_buffer("modes", modes.float().clone())
        self.register_buffer("shift", shift.float().clone())
        self.std, self.scale = float(std), float(scale)
        self.z_dim = modes.shape[1] + 1

    def forward(self, z: Tensor, y=None) -> Tensor:
        k = (torch.special.ndtr(z[:, 0]) * len(self.modes)).long().clamp_(0, len(self.modes) - 1)
        return self.scale * (self.modes[k] + self.std * z[:, 1:]) + self.shift

    def densities(self) -> Densities:
        return Densities(self.modes, self.std, self.scale, self.shift)


class Scalar(nn.Module):
    """An MLP with one output per point (D's logit, or the critic's value)."""

    def __init__(self, dim: int, hidden, slope: float):
        super().__init__()
        self.features, width = mlp_features(dim, list(hidden), "none", slope)
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor, y=None) -> Tensor:
        return self.head(self.features(x)).squeeze(1)


def _shift(value, dim: int) -> Tensor:
    """model.g_shift: a number (along the first axis) or one number per dimension."""
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        values = [float(v) for v in values]
        ok = all(math.isfinite(v) for v in values) and len(values) in (1, dim)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GanlabError(f"model.g_shift={value!r} is not valid: give a number (a shift along the first axis, e.g. "
                          f"model.g_shift=0.5) or {dim} numbers (model.g_shift=[0.5,0]).")
    return torch.tensor(values + [0.0] * (dim - len(values)))


def check(cfg, source) -> None:
    """One clear error, before any data is read, for what would change D* or is not this experiment."""
    m = cfg.model
    if cfg.loss.name not in ("minimax", "nonsaturating"):
        raise GanlabError(f"model=optimal_d compares D with p_r / (p_r + p_g), the optimum of the GAN value function: "
                          f"use loss=minimax (or nonsaturating: the same D loss), not loss={cfg.loss.name}.")
    if cfg.penalty.name != "none" or uses_label_tricks(cfg.tricks) or float(cfg.tricks.instance_noise) > 0 \
            or float(cfg.tricks.ema) > 0 or m.get("conditional"):
        raise GanlabError("model=optimal_d trains D with the plain value function against a fixed G: drop penalty=, "
                          "tricks.* and model.conditional (the critic's penalty is model.critic_penalty).")
    if not hasattr(source, "log_prob"):
        raise GanlabError(f"model=optimal_d needs data of known density; dataset={source.name} has none.")
    scale = m.get("g_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise GanlabError(f"model.g_scale={scale!r} is not valid: give a number > 0 (1: p_g is a translate of p_r).")
    if not isinstance(m.get("critic"), bool):
        raise GanlabError(f"model.critic={m.get('critic')!r} is not valid: use true or false.")
    gp = m.get("critic_penalty")
    if isinstance(gp, bool) or not isinstance(gp, (int, float)) or gp < 0:
        raise GanlabError(f"model.critic_penalty={gp!r} is not valid: give a number >= 0 (the Lipschitz penalty's weight, 10).")
    n = m.get("eval_points")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1000:
        raise GanlabError(f"model.eval_points={n!r} is not valid: give an integer >= 1000 (e.g. 65536).")


class OptimalD(Objective):
    samples_from_noise = False  # its G is fixed
    data_kinds = ("points",)
    data_hint = "trains D against a generator of known density: use a Gaussian mixture (dataset=mix1d, ring8 or grid25)."

    def __init__(self, cfg, source, device):
        super().__init__()
        check(cfg, source)
        m, t = cfg.model, cfg.train
        self.device, self.batch, self.gp = device, local_batch(int(t.batch_size)), float(m.critic_penalty)
        self.nets = self.build_nets(cfg, source)
        for net in self.nets.values():
            net.to(device)
        self.optimizers = {"d": make_optimizer(cfg.optimizer, self.nets["discriminator"].parameters(), "d", device)}
        self.phases = (Phase("D", "d", ("discriminator",), self.d_loss),)
        if "critic" in self.nets:
            self.optimizers["critic"] = make_optimizer(cfg.optimizer, self.nets["critic"].parameters(), "d", device)
            self.phases += (Phase("critic", "critic", ("critic",), self.critic_loss),)
        self.images_per_step = 2 * self.batch * len(self.phases)
        self.eval_points, self.seed, self.hidden = int(m.eval_points), int(cfg.seed), list(m.d_hidden)

    @staticmethod
    def build_nets(cfg, source) -> dict[str, nn.Module]:
        m, dim = cfg.model, source.shape[0]
        nets = {"generator": FixedGenerator(source.modes, source.std, float(m.g_scale), _shift(m.g_shift, dim)),
                "discriminator": Scalar(dim, m.d_hidden, float(m.leaky_slope))}
        if m.critic:
            nets["critic"] = Scalar(dim, m.d_hidden, float(m.leaky_slope))
        return nets

    def _pair(self, rt: Runtime) -> tuple[Tensor, Tensor]:
        real, _ = rt.next_batch()
        g = self.nets["generator"]
        return real, g(distributed.rows(torch.randn, self.batch, g.z_dim, device=self.device))

    def d_loss(self, step: int, rt: Runtime):
        real, fake = self._pair(rt)
        d = self.fwd["discriminator"]
        d_real, d_fake = d(real), d(fake)
        loss = bce_d(d_real, d_fake)
        return loss, {"Loss/D": loss, "D/D(x)": torch.sigmoid(d_real).mean(), "D/D(G(z))": torch.sigmoid(d_fake).mean()}

    def critic_loss(self, step: int, rt: Runtime):
        real, fake = self._pair(rt)
        f = self.fwd["critic"]
        w1 = f(real).mean() - f(fake).mean()
        pen = gradient_penalty(self.nets["critic"], real, fake, one_sided=True)
        loss = -w1 + self.gp * pen
        return loss, {"Loss/critic": loss, "Loss/critic_penalty": pen, "Critic/W1_estimate": w1}

    # ---------------------------------------------------------------------- reporting
    def describe(self) -> str:
        g = self.nets["generator"]
        shift = ", ".join(f"{v:g}" for v in g.shift.tolist())
        return (f"fixed G: p_g = law of {g.scale:g} X + ({shift}), X ~ p_r | D MLP {self.hidden}, GAN value function"
                + (f" | WGAN-LP critic (lambda {self.gp:g})" if "critic" in self.nets else ""))

    @staticmethod
    def measure(nets: dict, eval_points: int, seed: int) -> dict[str, float]:
        dens = nets["generator"].densities()
        u, w = expectation_points(dens, eval_points, seed)
        d, f = nets["discriminator"], nets.get("critic")
        was = {name: net.training for name, net in nets.items()}
        for net in nets.values():
            net.eval().cpu()
        try:
            return theory_metrics(dens, u, w, d, f)
        finally:
            for name, net in nets.items():
                net.train(was[name])

    def evaluation(self, n: int, generator: torch.Generator, real: Tensor):
        """No samples to score (G is fixed): the closed-form comparisons instead."""
        cpu = {name: _cpu_copy(net) for name, net in self.nets.items()}
        return None, self.measure(cpu, self.eval_points, self.seed)

    @classmethod
    def evaluation_of_checkpoint(cls, cfg, state, n, generator, real, ema, device):
        from ganlab.data.sources import build_source

        nets = cls.build_nets(cfg, build_source(cfg.dataset))
        for name, net in nets.items():
            net.load_state_dict(state[name])
        return None, cls.measure(nets, int(cfg.model.eval_points), int(cfg.seed))

    def snapshot(self, step: int) -> dict[str, Tensor]:
        from ganlab.plots import optimal_d_figure, to_image

        g, d = self.nets["generator"], _cpu_copy(self.nets["discriminator"]).eval()
        fig = optimal_d_figure(g.densities(), d, title=f"step {step}")
        return {"Theory/D_vs_Dstar": to_image(fig)}

    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        g = self.nets["generator"]
        return g(torch.randn(n, g.z_dim, generator=generator).to(self.device)).cpu()

    @classmethod
    def load_generator(cls, cfg, state: dict, ema: bool, device) -> nn.Module:
        from ganlab.data.sources import build_source

        g = cls.build_nets(cfg, build_source(cfg.dataset))["generator"]
        g.load_state_dict(state["generator"])
        return g.to(device).eval()


def _cpu_copy(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).cpu()

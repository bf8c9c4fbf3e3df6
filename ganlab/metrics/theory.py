"""The canon's theory, measured against closed forms (model=optimal_d, experiment=optimal_d).

With G fixed and both densities known:

- the optimal discriminator is D*(x) = p_r(x) / (p_r(x) + p_g(x)) (Goodfellow et al. 2014, Prop. 1);
- its value is V(D*, G) = -log 4 + 2 JS(p_r || p_g) (Thm 1), so a trained D gives a (lower-bound)
  estimate of the Jensen-Shannon divergence, JS ~ (V(D, G) + log 4) / 2;
- at D* the minimax G loss E log(1 - D(G(z))) has the gradient 2 grad JS, which vanishes as the
  supports separate (JS saturates at log 2), while the non-saturating loss -E log D(G(z)) has the
  gradient grad [KL(p_g || p_r) - 2 JS] (Arjovsky & Bottou 2017, Thm 2.5), and the Wasserstein
  critic's gradient stays at grad W_1 (= 1 along a translation, at every distance).

p_r is the dataset's Gaussian mixture; p_g is the law of `scale * X + shift` with X ~ p_r (so p_g is a
mixture too, with modes scale * mu + shift and std scale * sigma). Expectations are exact up to
quadrature: a 4,001-point grid over p_r's support in 1D, Monte Carlo points from p_r in 2D and up
(seeded, the same for every run, so runs are compared on the same points). E_{p_g} h is taken as
E_{X ~ p_r} h(scale X + shift): the G loss's gradient with respect to the shift (G's position) is
then one backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from ganlab.data.sources import mixture_log_prob

LOG2 = math.log(2.0)
GRID_POINTS = 4001  # 1D quadrature
GRID_SPAN = 8.0     # std on each side of the outermost modes
REGION = 0.01       # D's error is measured where (p_r + p_g) / 2 >= 1% of its peak


@dataclass
class Densities:
    """p_r = the equal-weight mixture N(modes, std^2 I); p_g = the law of scale * X + shift, X ~ p_r."""

    modes: Tensor
    std: float
    scale: float
    shift: Tensor

    def __post_init__(self):
        self.modes = self.modes.double().cpu()
        self.shift = self.shift.double().cpu()

    def log_pr(self, x: Tensor) -> Tensor:
        return mixture_log_prob(x, self.modes, self.std)

    def log_pg(self, x: Tensor) -> Tensor:
        return mixture_log_prob(x, self.scale * self.modes + self.shift, self.scale * self.std)

    def d_star_logit(self, x: Tensor) -> Tensor:
        """logit D*(x) = log p_r(x) - log p_g(x) (D* = sigmoid of it)."""
        return self.log_pr(x) - self.log_pg(x)


def expectation_points(dens: Densities, n_mc: int = 65536, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(points u, weights w) with E_{p_r} h ~ sum_i w_i h(u_i): a grid (1D) or seeded Monte Carlo draws."""
    d = dens.modes.shape[1]
    if d == 1:
        lo = float(dens.modes.min()) - GRID_SPAN * dens.std
        hi = float(dens.modes.max()) + GRID_SPAN * dens.std
        u = torch.linspace(lo, hi, GRID_POINTS, dtype=torch.float64)[:, None]
        w = dens.log_pr(u).exp()
        return u, w / w.sum()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(dens.modes), (n_mc,), generator=g)
    u = dens.modes[idx] + dens.std * torch.randn(n_mc, d, generator=g, dtype=torch.float64)
    return u, torch.full((n_mc,), 1.0 / n_mc, dtype=torch.float64)


def divergences(dens: Densities, u: Tensor, w: Tensor) -> dict[str, float]:
    """JS(p_r || p_g) and KL(p_g || p_r) in nats, from the exact densities (no network)."""
    xg = dens.scale * u + dens.shift
    lr_r, lg_r = dens.log_pr(u), dens.log_pg(u)
    lr_g, lg_g = dens.log_pr(xg), dens.log_pg(xg)
    js = 0.5 * (w * (LOG2 + lr_r - torch.logaddexp(lr_r, lg_r))).sum() \
        + 0.5 * (w * (LOG2 + lg_g - torch.logaddexp(lr_g, lg_g))).sum()
    kl = (w * (lg_g - lr_g)).sum()
    return {"js": float(js.clamp(0.0, LOG2)), "kl_g_r": float(kl.clamp_min(0.0))}


def _g_gradients(logit, dens: Densities, u: Tensor, w: Tensor) -> tuple[float, float]:
    """Norms of d/d shift of the minimax G loss E log(1 - D(G)) and the non-saturating -E log D(G), for
    a D given by its logit function (a trained net or D*)."""
    shift = dens.shift.clone().requires_grad_(True)
    xg = dens.scale * u + shift
    out = logit(xg)
    minimax = (w * logsigmoid(-out)).sum()
    nonsat = -(w * logsigmoid(out)).sum()
    g_mm, = torch.autograd.grad(minimax, shift, retain_graph=True)
    g_ns, = torch.autograd.grad(nonsat, shift)
    return float(g_mm.norm()), float(g_ns.norm())


def _net(fn):
    """A float32 network as a float64 function of float64 points (inputs cast, outputs cast back)."""
    def call(x: Tensor) -> Tensor:
        return fn(x.float()).double().reshape(-1)
    return call


def theory_metrics(dens: Densities, u: Tensor, w: Tensor, d_logit, critic=None) -> dict[str, float]:
    """What a trained D (and Wasserstein critic) say against the closed forms, all on (u, w).

    d_error_max / d_error_mean: max and (p_r + p_g)/2-weighted mean of |D - D*| where (p_r + p_g)/2 is at
    least 1% of its peak; v: V(D, G); js_from_v = (v + log 4) / 2 (<= js); js, kl_g_r: the exact values;
    grad_g_minimax / grad_g_nonsaturating: the norm of the G loss's gradient w.r.t. G's position with the
    trained D; *_at_dstar: the same with D*; grad_g_wasserstein: -E f(G(z))'s with the trained critic f;
    w1_critic: E_r f - E_g f, its estimate of W_1; w1: the exact W_1 when p_g is a translate of p_r."""
    d_fn = _net(d_logit)
    out = divergences(dens, u, w)
    xg = dens.scale * u + dens.shift
    with torch.no_grad():
        lr_r, lg_g = d_fn(u), d_fn(xg)
        v = (w * logsigmoid(lr_r)).sum() + (w * logsigmoid(-lg_g)).sum()
        xs, ws = torch.cat([u, xg]), torch.cat([w, w]) / 2
        log_m = torch.logaddexp(dens.log_pr(xs), dens.log_pg(xs)) - LOG2
        region = log_m >= log_m.max() + math.log(REGION)
        err = (torch.sigmoid(torch.cat([lr_r, lg_g])) - torch.sigmoid(dens.d_star_logit(xs))).abs()
    out.update(d_error_max=float(err[region].max()), d_error_mean=float((ws * err).sum()), v=float(v),
               js_from_v=float((v + 2 * LOG2) / 2))
    with torch.enable_grad():
        out["grad_g_minimax"], out["grad_g_nonsaturating"] = _g_gradients(d_fn, dens, u, w)
        # D* with p_g's parameters held where they are (dens.shift is not the leaf being differentiated):
        # the envelope theorem's derivative, D* is not moved with G
        out["grad_g_minimax_at_dstar"], out["grad_g_nonsaturating_at_dstar"] = _g_gradients(
            dens.d_star_logit, dens, u, w)
        if critic is not None:
            f = _net(critic)
            shift = dens.shift.clone().requires_grad_(True)
            loss = -(w * f(dens.scale * u + shift)).sum()
            grad, = torch.autograd.grad(loss, shift)
            out["grad_g_wasserstein"] = float(grad.norm())
            with torch.no_grad():
                out["w1_critic"] = float((w * f(u)).sum() - (w * f(xg)).sum())
    if dens.scale == 1.0:
        out["w1"] = float(dens.shift.norm())
    return out


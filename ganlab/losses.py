"""GAN losses as pure functions of D's raw outputs, and penalties kept separate.

`d_real`, `d_fake`: D's unbounded scores (logits / critic values), one per sample.
Each loss gives the discriminator's objective `d(d_real, d_fake)` and the generator's `g(d_fake)`,
both to be MINIMISED. Sigmoid-based losses work on logits (softplus form: stable, no log(0)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab import distributed
from ganlab.errors import GanlabError


def bce_d(d_real: Tensor, d_fake: Tensor, real_target: float | Tensor = 1.0, fake_target: float | Tensor = 0.0) -> Tensor:
    """-E[t log D(x) + (1-t) log(1-D(x))] over reals (target 1) plus fakes (target 0), D = sigmoid."""
    return _bce_logits(d_real, real_target) + _bce_logits(d_fake, fake_target)


def _bce_logits(logits: Tensor, target: float | Tensor) -> Tensor:
    """Mean binary cross-entropy of sigmoid(logits) against target. The hard labels 1 and 0 (the
    default recipe) take the two-kernel softplus form, -log sigmoid(x) = softplus(-x) and
    -log(1 - sigmoid(x)) = softplus(x); soft, noisy or tensor targets take PyTorch's general one."""
    if not isinstance(target, Tensor) and target in (0.0, 1.0):
        return F.softplus(logits if target == 0.0 else -logits).mean()
    t = torch.broadcast_to(torch.as_tensor(target, dtype=logits.dtype, device=logits.device), logits.shape)
    return F.binary_cross_entropy_with_logits(logits, t)


def minimax_g(d_fake: Tensor) -> Tensor:
    """E[log(1 - D(G(z)))], the original saturating objective (Goodfellow et al. 2014, eq. 1)."""
    return -F.softplus(d_fake).mean()


def nonsaturating_g(d_fake: Tensor) -> Tensor:
    """-E[log D(G(z))]: G trained with flipped labels (Goodfellow et al. 2014, sec. 3)."""
    return F.softplus(-d_fake).mean()


def wasserstein_d(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """E[D(G(z))] - E[D(x)]: the negated critic estimate of W1 (Arjovsky et al. 2017)."""
    return d_fake.mean() - d_real.mean()


def wasserstein_g(d_fake: Tensor) -> Tensor:
    return -d_fake.mean()


def least_squares_d(d_real: Tensor, d_fake: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2] (Mao et al. 2017, eq. 2)."""
    return 0.5 * (d_real - b).pow(2).mean() + 0.5 * (d_fake - a).pow(2).mean()


def least_squares_g(d_fake: Tensor, c: float = 1.0) -> Tensor:
    """1/2 E[(D(G(z)) - c)^2]."""
    return 0.5 * (d_fake - c).pow(2).mean()


def hinge_d(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))] (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def hinge_g(d_fake: Tensor) -> Tensor:
    return -d_fake.mean()


@dataclass(frozen=True)
class Loss:
    name: str
    d: Callable[..., Tensor]
    g: Callable[..., Tensor]
    sigmoid: bool  # D's score is a logit: log sigmoid(score) means as D(x), D(G(z)) probabilities
    d_params: tuple[str, ...] = ()
    g_params: tuple[str, ...] = ()
    # names of d's keyword arguments holding the real and the fake targets, for the label tricks
    # (None: the loss has no targets, e.g. Wasserstein and hinge)
    targets: tuple[str, str] | None = None


LOSSES: dict[str, Loss] = {
    "minimax": Loss("minimax", bce_d, minimax_g, sigmoid=True, targets=("real_target", "fake_target")),
    "nonsaturating": Loss("nonsaturating", bce_d, nonsaturating_g, sigmoid=True,
                          targets=("real_target", "fake_target")),
    "wasserstein": Loss("wasserstein", wasserstein_d, wasserstein_g, sigmoid=False),
    "least_squares": Loss("least_squares", least_squares_d, least_squares_g, sigmoid=False,
                          d_params=("a", "b"), g_params=("c",), targets=("b", "a")),
    "hinge": Loss("hinge", hinge_d, hinge_g, sigmoid=False),
}


def d_score_logs(loss: Loss, d_real: Tensor, d_fake: Tensor) -> dict[str, Tensor]:
    """What D's scores say, for the logs (0-d device tensors): D(x) and D(G(z)) as probabilities for
    the sigmoid losses, the critic's mean values for the others."""
    with torch.no_grad():
        if loss.sigmoid:
            return {"D/D(x)": torch.sigmoid(d_real).mean(), "D/D(G(z))": torch.sigmoid(d_fake).mean()}
        return {"D/critic_real": d_real.mean(), "D/critic_fake": d_fake.mean()}


def get_loss(cfg) -> tuple[Loss, dict, dict]:
    """The loss named by the `loss` config group, with its parameters split for d and g."""
    name = cfg.name
    if name not in LOSSES:
        raise GanlabError(f"loss.name={name!r} is unknown: use one of {', '.join(LOSSES)}.")
    loss = LOSSES[name]
    return loss, {k: float(cfg[k]) for k in loss.d_params}, {k: float(cfg[k]) for k in loss.g_params}


# ----------------------------------------------------------------------------------- penalties

def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor,
                     center: float = 1.0, alpha: Tensor | None = None, scale: Tensor | None = None,
                     one_sided: bool = False) -> Tensor:
    """E[(||grad D(x_hat)||_2 - center)^2] (Gulrajani et al. 2017, Algorithm 1), unweighted;
    `one_sided`: E[max(0, ||grad D(x_hat)||_2 - center)^2], the Lipschitz penalty of WGAN-LP (Petzka et
    al. 2018), which asks only what the Lipschitz constraint asks (no barrier at a flat critic).

    x_hat = alpha * real + (1 - alpha) * fake with ONE alpha ~ U(0, 1) PER SAMPLE, and the norm of
    each sample's gradient over all of its dimensions. Differentiable w.r.t. the critic's weights.
    `scale`: fp16 mixed precision's loss scale; the input gradient is taken of the scaled scores
    (so it does not underflow in half precision) and unscaled before the norm, as in PyTorch's AMP
    gradient-penalty recipe. The norm is always computed in float32.
    """
    n = real.shape[0]
    real, fake = real.detach().float(), fake.detach().float()
    if alpha is None:
        alpha = distributed.rows(torch.rand, n, device=real.device, dtype=real.dtype)  # one per sample
    alpha = alpha.view(n, *([1] * (real.dim() - 1)))
    x_hat = alpha * real + (1 - alpha) * fake
    norms = _input_grad(critic, x_hat, scale).flatten(1).norm(2, dim=1)
    excess = norms - center
    return (excess.clamp_min(0) if one_sided else excess).pow(2).mean()


def _input_grad(critic: Callable[[Tensor], Tensor], x: Tensor, scale: Tensor | None) -> Tensor:
    """d sum(critic(x)) / dx per sample, differentiable w.r.t. the critic's weights, in float32.
    Under fp16 autocast the scores are multiplied by the loss scale before the gradient (so it does
    not underflow) and the gradient divided by it afterwards (PyTorch's AMP gradient-penalty recipe)."""
    x = x.detach().float().requires_grad_(True)
    out = critic(x).float().sum()
    if scale is not None:
        out = out * scale
    (grad,) = torch.autograd.grad(out, x, create_graph=True)
    if scale is not None:
        grad = grad / scale
    return grad.float()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor | None = None,
               scale: Tensor | None = None) -> Tensor:
    """E[||grad D(x)||_2^2] on REAL samples only (R1, Mescheder et al. 2018, eq. 9), unweighted:
    the config's weight is gamma / 2. It pushes D's gradient to zero on the data, which makes the
    non-saturating GAN converge locally where it would otherwise oscillate. `scale`: as for
    gradient_penalty (fp16 loss scale, unscaled before the square)."""
    return _input_grad(critic, real, scale).flatten(1).pow(2).sum(1).mean()


PENALTIES = {"gp": gradient_penalty, "r1": r1_penalty}


def get_penalty(cfg):
    """(function, weight, kwargs) for the `penalty` group, or None for `penalty=none`."""
    if cfg.name == "none" or float(cfg.weight) == 0.0:
        return None
    if cfg.name not in PENALTIES:
        raise GanlabError(f"penalty.name={cfg.name!r} is unknown: use none or {', '.join(PENALTIES)}.")
    kwargs = {"center": float(cfg.center)} if cfg.name == "gp" else {}
    return PENALTIES[cfg.name], float(cfg.weight), kwargs


def validate_penalty(p) -> None:
    """penalty.*: a weight >= 0 for any penalty but none."""
    from ganlab.checks import positive

    if p.name != "none":
        positive(p.weight, "penalty.weight", integer=False, allow_zero=True)

"""The classic GAN training tricks, each a small pure piece the training loop calls.

All are off by default (conf/train.yaml, `tricks:`); each names its source there and in the README.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ganlab import distributed
from ganlab.errors import GanlabError


def uses_label_tricks(tricks) -> bool:
    return tricks.label_smoothing > 0 or bool(tricks.noisy_labels) or tricks.flip_labels > 0


def d_targets(n: int, tricks, real: float = 1.0, fake: float = 0.0, generator: torch.Generator | None = None,
              device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample targets for D's real and fake batches after the label tricks.

    - one-sided smoothing: real target real - s (1 -> 0.9 for s = 0.1); fakes untouched;
    - noisy labels: real ~ U(0.7, 1.2), fake ~ U(0, 0.3) (for the 0/1 coding; shifted for others);
    - flipped labels: each sample's real and fake targets swapped with probability p.
    """
    real_t = torch.full((n,), float(real), device=device)
    fake_t = torch.full((n,), float(fake), device=device)
    if tricks.label_smoothing > 0:
        real_t = real_t - float(tricks.label_smoothing) * (real - fake)
    if tricks.noisy_labels:
        span = real - fake
        real_t = real + span * (_rand(n, generator, device) * 0.5 - 0.3)
        fake_t = fake + span * _rand(n, generator, device) * 0.3
    if tricks.flip_labels > 0:
        flip = _rand(n, generator, device) < float(tricks.flip_labels)
        real_t, fake_t = torch.where(flip, fake_t, real_t), torch.where(flip, real_t, fake_t)
    return real_t, fake_t


def instance_noise_std(step: int, tricks, total_steps: int) -> float:
    """std of the instance noise at `step` (1-based): linear decay from tricks.instance_noise to 0."""
    sigma0 = float(tricks.instance_noise)
    if sigma0 <= 0:
        return 0.0
    horizon = tricks.instance_noise_anneal_steps or total_steps
    return sigma0 * max(0.0, 1.0 - (step - 1) / float(horizon))


def add_instance_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    return x if std <= 0 else x + std * distributed.randn_like_rows(x)


def _rand(n: int, generator, device) -> torch.Tensor:
    """U(0, 1) per sample: from `generator`, or from the training stream (this rank's rows under torchrun)."""
    if generator is not None:
        return torch.rand(n, generator=generator, device=device)
    return distributed.rows(torch.rand, n, device=device)


class EMA:
    """An exponential moving average of a model's weights (buffers, e.g. BatchNorm stats, copied).

    `rampup` (StyleGAN2-ADA's ema_rampup, e.g. 0.05): the average's half-life, in steps, is at most
    rampup x the steps so far, so early on it follows G closely instead of keeping the random init
    for thousands of steps (0.999 forgets half of the init only after 693 steps); once
    rampup x step exceeds the half-life of `decay`, `decay` alone holds. None: `decay` from the start."""

    def __init__(self, model: nn.Module, decay: float, rampup: float | None = None):
        if not 0 < decay < 1:
            raise GanlabError(f"tricks.ema={decay} is not valid: use a decay in (0, 1) such as 0.999, or 0 for off.")
        self.decay, self.rampup = decay, rampup
        self.half_life = math.log(0.5) / math.log(decay)  # in steps
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._src = [p for p in model.parameters()]
        self._dst = [p for p in self.module.parameters()]
        self._src_buf = list(model.buffers())
        self._dst_buf = list(self.module.buffers())

    def decay_at(self, step: int | None) -> float:
        """The decay used at `step` (1-based; a pure function of it, so a resume needs nothing more)."""
        if not self.rampup or step is None:
            return self.decay
        ramped = self.rampup * max(step, 1)
        return self.decay if ramped >= self.half_life else 0.5 ** (1.0 / ramped)

    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay_at(step))
        for d, s in zip(self._dst_buf, self._src_buf):
            d.copy_(s)


def make_emas(tricks, nets: dict[str, nn.Module], names) -> dict[str, EMA]:
    """tricks.ema's moving averages of the named nets (with tricks.ema_rampup), by name; none when tricks.ema is 0."""
    if not tricks.ema:
        return {}
    return {name: EMA(nets[name], float(tricks.ema), tricks.get("ema_rampup")) for name in names}


@torch.no_grad()
def clip_weights(params: list[torch.Tensor], c: float) -> None:
    """Clamp every weight to [-c, c] in place (WGAN's Lipschitz constraint)."""
    torch._foreach_clamp_min_(params, -c)
    torch._foreach_clamp_max_(params, c)

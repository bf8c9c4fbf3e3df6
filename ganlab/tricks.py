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


DIFF_AUGMENT = ("color", "translation", "cutout")


def parse_diff_augment(policy) -> tuple[str, ...]:
    """tricks.diff_augment (a list such as [translation,cutout], a "translation,cutout" string, or null) -> the
    ops in DiffAugment's order."""
    if policy is None or policy == "" or policy is False:
        return ()
    ops = [p.strip() for p in policy.split(",")] if isinstance(policy, str) else [str(p) for p in policy]
    unknown = [op for op in ops if op not in DIFF_AUGMENT]
    if unknown or not ops:
        raise GanlabError(f"tricks.diff_augment={policy!r}: {', '.join(unknown) or 'empty'} is not an op; use a "
                          f"subset of [{','.join(DIFF_AUGMENT)}] (e.g. tricks.diff_augment=[translation,cutout]), "
                          "or null.")
    return tuple(op for op in DIFF_AUGMENT if op in ops)


def diff_augment(x: torch.Tensor, ops: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): the same kind of random, differentiable augmentation applied to every
    image D sees, real and fake, in D's and in G's step, so D cannot memorise a small training set and G's
    gradient passes through the augmentation. The official code's ops and magnitudes, per sample:
    - color: brightness + U(-0.5, 0.5), saturation x U(0, 2) about the channel mean, contrast x U(0.5, 1.5)
      about the image mean (channels are mixed: not for data whose channels are independent, e.g. stacked_mnist);
    - translation: an integer shift of up to 1/8 of the size on each axis, zeros shifted in;
    - cutout: a square of half the size, anywhere (clipped at the border), set to 0.
    x: N x C x H x W in [-1, 1]."""
    if not ops:
        return x
    n, _, h, w = x.shape
    if "color" in ops:
        r = _rand(n, generator, x.device, 3).to(x.dtype)
        x = x + (r[:, 0] - 0.5).view(n, 1, 1, 1)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (r[:, 1] * 2).view(n, 1, 1, 1) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (r[:, 2] + 0.5).view(n, 1, 1, 1) + mean
    if "translation" in ops:
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        r = _rand(n, generator, x.device, 2)
        dy = (r[:, 0] * (2 * sh + 1)).long().clamp(max=2 * sh) - sh
        dx = (r[:, 1] * (2 * sw + 1)).long().clamp(max=2 * sw) - sw
        padded = torch.nn.functional.pad(x, (sw, sw, sh, sh))
        iy = torch.arange(h, device=x.device)[None] + sh - dy[:, None]  # output row i reads input row i - dy
        ix = torch.arange(w, device=x.device)[None] + sw - dx[:, None]
        x = padded[torch.arange(n, device=x.device)[:, None, None], :, iy[:, :, None], ix[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    if "cutout" in ops:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        r = _rand(n, generator, x.device, 2)
        cy = (r[:, 0] * (h + 1 - ch % 2)).long() - ch // 2  # the square's first row (official offsets)
        cx = (r[:, 1] * (w + 1 - cw % 2)).long() - cw // 2
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_y = (ys[None] >= cy[:, None]) & (ys[None] < cy[:, None] + ch)
        in_x = (xs[None] >= cx[:, None]) & (xs[None] < cx[:, None] + cw)
        keep = ~(in_y[:, :, None] & in_x[:, None, :])
        x = x * keep[:, None].to(x.dtype)
    return x.contiguous()


def _rand(n: int, generator, device, *shape: int) -> torch.Tensor:
    """U(0, 1) per sample (n x *shape): from `generator`, or from the training stream (this rank's rows under
    torchrun)."""
    if generator is not None:
        return torch.rand(n, *shape, generator=generator, device=device)
    return distributed.rows(torch.rand, n, *shape, device=device)


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


class Snapshots:
    """tricks.self_ensemble: copies of G's raw weights every `every` steps, the last `size` of them kept
    (Wang et al. 2016, "Ensembles of generative adversarial networks": the self-ensemble of one run's
    snapshots). The sampler is the uniform mixture of the current G and the size - 1 latest snapshots
    taken before this step: a G whose class mix drifts from snapshot to snapshot (here: which digits
    Stacked MNIST's G over-makes) averages those drifts in its mixture, which averaging the *weights*
    (EMA) does not. Copies stay on G's device; taking one is a device copy, no host sync."""

    def __init__(self, size: int, every: int):
        self.size, self.every = int(size), int(every)
        self.kept: list[tuple[int, dict]] = []  # (step, G's state_dict), oldest first

    @classmethod
    def of(cls, tricks) -> "Snapshots | None":
        """tricks.self_ensemble's snapshots, or None when it is off (0 or 1)."""
        size = int(tricks.get("self_ensemble") or 0)
        return cls(size, int(tricks.get("self_ensemble_every") or 1)) if size > 1 else None

    def take(self, step: int, model: nn.Module) -> None:
        if step % self.every == 0:
            self.kept = [*self.kept, (step, {k: v.detach().clone() for k, v in model.state_dict().items()})][-self.size:]

    def members(self, step: int) -> list[tuple[int, dict]]:
        """The snapshots the sampler mixes with the G of `step`: at most size - 1, all taken before `step`."""
        return [(s, w) for s, w in self.kept if s < step][-(self.size - 1):] if self.size > 1 else []

    def state_dict(self) -> dict:
        return {"steps": [s for s, _ in self.kept], "weights": [w for _, w in self.kept]}

    def load_state_dict(self, state: dict | None) -> None:
        state = state or {}
        self.kept = list(zip([int(s) for s in state.get("steps", [])], state.get("weights", [])))[-self.size:]


class SelfEnsemble(nn.Module):
    """The uniform mixture of generators with one latent space: sample i of every call comes from member
    i mod K, so each member makes exactly 1/K of any batch (K | n) and the z's stay i.i.d. within each.
    `steps`: the training step of each member, for descriptions. Acts like one G (z_dim, conditional,
    num_classes, g(z, y))."""

    def __init__(self, members: list[nn.Module], steps: list[int]):
        super().__init__()
        if not members:
            raise ValueError("a self-ensemble needs at least one member")
        self.members, self.steps = nn.ModuleList(members), list(steps)
        self.training = members[-1].training  # callers that switch to eval and back restore the current G's mode
        first = members[0]
        self.z_dim, self.num_classes = first.z_dim, getattr(first, "num_classes", None)

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.members[0], "conditional", False))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        k = len(self.members)
        if k == 1:
            return self.members[0](z, y)
        parts = [m(z[i::k], None if y is None else y[i::k]) for i, m in enumerate(self.members) if len(z[i::k])]
        out = parts[0].new_empty((len(z), *parts[0].shape[1:]))
        for i, part in enumerate(parts):
            out[i::k] = part
        return out

    def describe(self) -> str:
        return describe_ensemble(self.steps)


def describe_ensemble(steps: list[int]) -> str:
    """How metrics.json names a self-ensemble's samples (the steps of its members)."""
    return f"self-ensemble of the raw weights at steps {', '.join(map(str, steps))}"


def snapshot_net(template: nn.Module, weights: dict) -> nn.Module:
    """A frozen copy of `template` (eval mode, no grad) holding a snapshot's weights."""
    net = copy.deepcopy(template).requires_grad_(False)
    net.load_state_dict(weights)
    return net.eval()


def self_ensemble(members: list[tuple[int, dict]], current: nn.Module, current_step: int) -> nn.Module:
    """The sampler of a run with snapshots: `current` alone when there are none, else a SelfEnsemble of
    frozen copies of it holding each snapshot's weights, and `current` last."""
    if not members:
        return current
    return SelfEnsemble([*(snapshot_net(current, w) for _, w in members), current],
                        [s for s, _ in members] + [current_step])


# ------------------------------------------------------------------- Jacobian-based truncation
JBT_REFERENCE = 4096  # prior latents that set the threshold (a fixed seed: the same latents at every call)
JBT_MAX_ROUNDS = 200  # redraw rounds before giving up (at a 10% rejection rate, one round in a thousand is needed)


def jacobian_norms(g: nn.Module, z: torch.Tensor, y: torch.Tensor | None = None,
                   chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(G(z), ||dG(z)/dz||_F per row), exact: one forward-mode pass along each latent axis (z_dim passes, each
    giving G(z) and one column of the Jacobian), in chunks of `chunk` rows. Works under no_grad."""
    from torch.func import jvp

    outs, norms = [], []
    for i in range(0, len(z), chunk):
        zc, yc = z[i:i + chunk], None if y is None else y[i:i + chunk]
        square, x = zc.new_zeros(len(zc)), None
        for k in range(zc.shape[1]):
            axis = torch.zeros_like(zc)
            axis[:, k] = 1
            x, column = jvp(lambda v: g(v, yc), (zc,), (axis,))
            square = square + column.flatten(1).float().square().sum(1)
        outs.append(x)
        norms.append(square.sqrt())
    return torch.cat(outs), torch.cat(norms)


class JacobianTruncation(nn.Module):
    """Jacobian-based truncation (JBT; Tanielian et al. 2020, "Learning disconnected manifolds: a no GAN's
    land"): a G fed by a connected latent space must cross the gaps between disconnected modes, and does so
    where it is steepest. Latents whose ||dG/dz||_F exceeds `threshold` (the prior's top `fraction`) are
    redrawn until they pass, so the sampler is G on the prior restricted to {||J|| <= threshold}. The
    redraws come from a generator seeded by the bytes of z: the same z gives the same samples. Acts like
    one G (z_dim, conditional, num_classes, g(z, y)); `g` is the wrapped sampler."""

    def __init__(self, g: nn.Module, fraction: float, threshold: float):
        super().__init__()
        self.g, self.fraction, self.threshold = g, float(fraction), float(threshold)
        self.training = g.training
        self.z_dim, self.num_classes = g.z_dim, getattr(g, "num_classes", None)

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.g, "conditional", False))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        import zlib

        x, norms = jacobian_norms(self.g, z, y)
        todo = (norms > self.threshold).nonzero().view(-1)
        if not len(todo):
            return x
        x = x.clone()
        gen = torch.Generator(device=z.device).manual_seed(zlib.crc32(z.detach().cpu().numpy().tobytes()))
        for _ in range(JBT_MAX_ROUNDS):
            fresh = torch.randn(len(todo), *z.shape[1:], generator=gen, device=z.device, dtype=z.dtype)
            x_new, n_new = jacobian_norms(self.g, fresh, None if y is None else y[todo])
            ok = n_new <= self.threshold
            x[todo[ok]] = x_new[ok]
            todo = todo[~ok]
            if not len(todo):
                return x
        raise GanlabError(f"Jacobian truncation: {len(todo)} latents still above the threshold "
                          f"{self.threshold:.4g} after {JBT_MAX_ROUNDS} redraws; lower tricks.jacobian_truncation.")

    def describe(self) -> str:
        return describe_truncation(self.fraction, self.threshold)


def describe_truncation(fraction: float, threshold: float | None = None) -> str:
    """How metrics.json names Jacobian-truncated samples."""
    at = f", ‖dG/dz‖_F <= {threshold:.4g}" if threshold is not None else ""
    return (f"Jacobian-truncated: latents in the prior's top {fraction * 100:g}% of ‖dG/dz‖_F redrawn "
            f"(tricks.jacobian_truncation={fraction:g}{at}; Tanielian et al. 2020)")


@torch.no_grad()
def jacobian_truncation(g: nn.Module, fraction: float) -> nn.Module:
    """`g` wrapped in a JacobianTruncation dropping the prior's top `fraction` of Jacobian norms (the
    threshold: that quantile over JBT_REFERENCE fixed prior latents, and uniform labels for a conditional G),
    or `g` itself when fraction is 0. The threshold is measured in eval mode; g's mode is restored."""
    if not fraction:
        return g
    device = next(g.parameters()).device
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(JBT_REFERENCE, g.z_dim, generator=gen).to(device)
    y = (torch.randint(int(g.num_classes), (JBT_REFERENCE,), generator=gen).to(device)
         if getattr(g, "conditional", False) else None)
    was_training = g.training
    g.eval()
    _, norms = jacobian_norms(g, z, y)
    g.train(was_training)
    return JacobianTruncation(g, fraction, float(norms.quantile(1 - float(fraction))))


def walkable(g: nn.Module) -> nn.Module:
    """The one G whose latent space a path can walk: a Jacobian truncation's G (a path must cross the
    steep latents it redraws), a self-ensemble's latest member (it mixes members sample by sample)."""
    if isinstance(g, JacobianTruncation):
        g = g.g
    return g.members[-1] if isinstance(g, SelfEnsemble) else g


def validate_tricks(tr, m) -> None:
    """tricks.*: label and noise tricks, EMA, DiffAugment, self-ensembles and truncation (`m`: the model, for
    the tricks that only the one-G-one-D families take)."""
    from ganlab.checks import adversarial_only, boolean, fraction, positive

    for key in ("label_smoothing", "flip_labels", "jacobian_truncation"):
        fraction(tr.get(key, 0.0), f"tricks.{key}")  # runs saved before a trick existed lack its key
    if tr.get("jacobian_truncation"):
        adversarial_only(m, "tricks.jacobian_truncation", "tricks.jacobian_truncation=0")
    fraction(tr.ema, "tricks.ema", "a decay in [0, 1) such as 0.999 (0 = off)")
    if tr.get("ema_rampup") is not None:
        positive(tr.ema_rampup, "tricks.ema_rampup", integer=False)
    positive(tr.instance_noise, "tricks.instance_noise", integer=False, allow_zero=True)
    if tr.instance_noise_anneal_steps is not None:
        positive(tr.instance_noise_anneal_steps, "tricks.instance_noise_anneal_steps")
    if parse_diff_augment(tr.get("diff_augment")):
        adversarial_only(m, "tricks.diff_augment", "tricks.diff_augment=null")
    if tr.get("self_ensemble"):
        positive(tr.self_ensemble, "tricks.self_ensemble", allow_zero=True)
        positive(tr.self_ensemble_every, "tricks.self_ensemble_every")
        if tr.self_ensemble > 1:
            adversarial_only(m, "tricks.self_ensemble", "tricks.self_ensemble=0")
    positive(tr.get("feature_matching", 0.0), "tricks.feature_matching", integer=False, allow_zero=True)
    if tr.get("feature_matching"):
        adversarial_only(m, "tricks.feature_matching", "tricks.feature_matching=0")
    boolean(tr.noisy_labels, "tricks.noisy_labels")

"""What one step needs from the run: the learning-rate schedule, what the loop lends the objective's phases
(batches, autocast, loss scales), and the device-side sums of the logged scalars."""

from __future__ import annotations

import torch


def lr_factor(step: int, steps: int, decay_from: float) -> float:
    """Constant, then linear decay to 0 at the last step from step decay_from * steps on (the
    schedule of CycleGAN and of many 2D-mixture GANs: the late small steps sharpen the modes)."""
    start = decay_from * steps
    if step <= start:
        return 1.0
    return max(0.0, (steps - step) / max(steps - start, 1e-9))


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the parameters' current gradients (a device tensor: no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class Runtime:
    """What the loop lends the objective's phases (ganlab.objectives.base.Runtime)."""

    def __init__(self, device: torch.device, batches, amp: str, channels_last: bool, scalers: dict):
        self.device, self._batches, self._channels_last, self._scalers = device, batches, channels_last, scalers
        self._amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def next_batch(self, n: int | None = None) -> tuple:
        batch = self._batches.next(n)
        if self._channels_last:
            batch = tuple(x.contiguous(memory_format=torch.channels_last) if torch.is_tensor(x) and x.dim() == 4 else x
                          for x in batch)
        return batch

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self._amp, enabled=self._amp is not None)

    def loss_scale(self, optimizer: str) -> torch.Tensor | None:
        scaler = self._scalers[optimizer]
        return scaler.scale(torch.ones((), device=self.device)) if scaler.is_enabled() else None


class LogSums:
    """Each phase's logged scalars summed on the device over a logging window, and the first step
    whose loss was NaN/Inf (0: none), also on the device: read back once per window."""

    def __init__(self, device: torch.device):
        self.sums: dict[str, tuple[tuple[str, ...], torch.Tensor]] = {}
        self.counts: dict[str, int] = {}
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)

    def add(self, phase: str, step: int, loss: torch.Tensor, logs: dict, track_nan: bool,
            absorbed: torch.Tensor | None = None) -> None:
        values = torch.stack([v.detach() for v in logs.values()])
        if phase in self.sums:
            self.sums[phase][1].add_(values)
            self.counts[phase] += 1
        else:
            self.sums[phase], self.counts[phase] = (tuple(logs), values), 1
        if track_nan:
            bad = ~torch.isfinite(loss.detach())
            if absorbed is not None:
                bad = bad & ~absorbed
            self.first_bad.masked_fill_(self.first_bad.eq(0) & bad, step)

    def means(self) -> dict[str, float]:
        """The window's means, by tag (one host read), and a fresh window."""
        if not self.sums:
            return {}
        tags = [tag for names, _ in self.sums.values() for tag in names]
        values = torch.cat([sums / self.counts[phase] for phase, (_, sums) in self.sums.items()]).tolist()
        self.sums.clear()
        self.counts.clear()
        return dict(zip(tags, values))

"""Faults made on purpose for the watchdog tests, as user objectives (`model.objective=faults.NAME`, with
tests/ on PYTHONPATH): the real loop, the real nets, one thing broken at a known step."""

from __future__ import annotations

from ganlab.objectives.adversarial import Adversarial


class ForcedCollapse(Adversarial):
    """From step `model.collapse_at` on, G ignores its latent (z is zeroed on the way in): every z gives
    the same output, the extreme of mode collapse."""

    def __init__(self, cfg, source, device):
        super().__init__(cfg, source, device)
        self.collapse_at, self.collapsed = int(cfg.model.collapse_at), False
        self.nets["generator"].register_forward_pre_hook(
            lambda module, args: (args[0] * 0, *args[1:]) if self.collapsed else None)

    def d_loss(self, step, rt):
        self.collapsed = step >= self.collapse_at
        return super().d_loss(step, rt)


class BypassesDDP(Adversarial):
    """A G phase that runs G around `fwd` (the raw net, not its DDP wrapper): under torchrun its gradients are
    never averaged over the processes, so their Gs drift apart; the loop must say so."""

    def g_loss(self, step, rt):
        from ganlab.models import sample_z

        gen = self.nets["generator"](sample_z(self.batch, self.z_dim, device=self.device), None)
        loss_g = self.loss_fn.g(self.fwd["discriminator"](gen, None), **self.g_kw)
        return loss_g, {"Loss/G": loss_g}

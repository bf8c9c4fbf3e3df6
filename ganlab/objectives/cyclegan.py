"""CycleGAN's objective (Zhu et al. 2017): unpaired translation between domains A and B.

G_AB: A -> B and G_BA: B -> A train together (optimizer "g"), then D_A and D_B (optimizer "d"), as
the authors' `optimize_parameters` does:
- "G" (both Ds frozen): adversarial terms loss.g(D_B(G_AB(a))) and loss.g(D_A(G_BA(b))), each
  weighted by model.adv_weight; cycle consistency lambda * (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)
  with lambda = model.lambda_cycle (10); identity model.lambda_identity * lambda * (|G_AB(b) - b|_1 +
  |G_BA(a) - a|_1) (0.5 lambda in the paper).
- "D": each D on the same real batch and on a fake from its history pool (`ImagePool`, 50 images per
  direction: until it is full every fake goes in and is shown; then with probability 0.5 D sees an
  older fake, which the new one replaces). The pools are device tensors in the objective's state, so
  a resume continues exactly.
Every term is its own scalar (Loss/G_adv_ab, Loss/cycle_a, Loss/identity_b, Loss/D_a, ...).
The paper's least-squares loss is E[(D(G(x)) - 1)^2] for G; ganlab's least_squares keeps Mao et al.'s
1/2, so the recipe sets model.adv_weight 2 to give the adversarial and cycle terms the paper's balance.
The learning rate is constant, then decays linearly to 0: by default counted in steps (train.lr_decay_from:
0.5, the paper's 100 + 100 epochs as halves of train.steps); with model.n_epochs set, in the paper's and the
authors' terms (`epoch_schedule`): an epoch is max(|A|, |B|) images (the authors' dataset length), the lr
constant for model.n_epochs epochs and then lowered once per epoch, linearly, over model.n_epochs_decay
epochs (the authors' lambda rule with the scheduler stepped at each epoch's end: epoch e, counted from 0,
trains at 1 - max(0, e + 1 - n_epochs) / (n_epochs_decay + 1)).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab.data.batches import to_unit_range
from ganlab.distributed import local_batch
from ganlab.errors import GanlabError
from ganlab.losses import d_score_logs, get_loss
from ganlab.models import cyclegan as cg
from ganlab.objectives.base import Objective, Phase, Runtime, check_image_to_image
from ganlab.optim import is_convolutional, make_optimizer
from ganlab.tricks import make_emas
from ganlab.viz import image_grid

log = logging.getLogger("ganlab")


def epoch_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """The authors' lambda rule (epoch_count 1): the lr factor of epoch `epoch` (counted from 0)."""
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


def epoch_schedule(model_cfg, images: int, global_batch: int, steps: int):
    """(step -> lr factor, steps per epoch) for model.n_epochs / model.n_epochs_decay; None when n_epochs is null."""
    n, decay = model_cfg.get("n_epochs"), model_cfg.get("n_epochs_decay", 100)
    if n is None:
        return None, None
    for key, value in (("n_epochs", n), ("n_epochs_decay", decay)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise GanlabError(f"model.{key}={value!r} is not valid: give a number of epochs >= 0 (the paper: 100 and "
                              "100), or model.n_epochs=null to count the schedule in train.steps (train.lr_decay_from).")
    per = math.ceil(images / global_batch)
    total = (n + decay) * per
    if steps != total:
        log.warning(f"model.n_epochs={n} + model.n_epochs_decay={decay} epochs of {images} images at batch "
                    f"{global_batch} are {total} steps; train.steps={steps} " +
                    ("stops before the lr has decayed to its end" if steps < total else "trains on at the last "
                     "epoch's lr") + f" (train.steps={total} for the whole schedule).")
    return (lambda step: epoch_factor(min((step - 1) // per, n + decay - 1), n, decay)), per


class ImagePool:
    """Shrivastava et al.'s (2017) history of generated images, as CycleGAN uses it, on the device.

    `query(images)` goes image by image: while fewer than `size` are held, the image is stored and
    returned; once full, with probability 0.5 a random held image is returned and the new one takes
    its place, else the new image is returned. The draws come from the torch RNG on the device and
    nothing is read back to the host (the count of held images is host-side bookkeeping)."""

    def __init__(self, size: int, shape: tuple[int, ...], device: torch.device):
        self.size, self.count = size, 0
        self.images = torch.zeros(size, *shape, device=device)

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        images = images.detach()
        out = []
        for img in images.split(1):
            if self.count < self.size:
                self.images[self.count:self.count + 1].copy_(img)
                self.count += 1
                out.append(img)
                continue
            use_old = torch.rand((), device=img.device) < 0.5
            slot = torch.randint(self.size, (1,), device=img.device)
            old = self.images.index_select(0, slot)
            self.images.index_copy_(0, slot, torch.where(use_old, img, old))
            out.append(torch.where(use_old, old, img))
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"images": self.images.detach().clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.images.copy_(state["images"])
        self.count = int(state["count"])


def cycle_loss(x: Tensor, reconstructed: Tensor) -> Tensor:
    """|F(G(x)) - x|_1, the mean over pixels (the paper's L_cyc for one direction)."""
    return F.l1_loss(reconstructed, x)


def identity_loss(x: Tensor, mapped: Tensor) -> Tensor:
    """|G(y) - y|_1 for y of G's target domain (the paper's L_identity for one direction)."""
    return F.l1_loss(mapped, x)


class CycleGAN(Objective):
    samples_from_noise = False  # it translates images
    data_kinds = ("unpaired",)
    data_hint = ("translates between two image domains: use dataset=unpaired dataset.root_a=DIR dataset.root_b=DIR "
                 "(e.g. the folders scripts/fashion_domains.py writes).")

    def __init__(self, cfg, source, device: torch.device):
        super().__init__()
        m, t, tricks = cfg.model, cfg.train, cfg.tricks
        check_image_to_image(cfg, "the other domain's images")
        if cfg.eval.every:
            raise GanlabError(f"model={m.name} translates images and has no sampler for eval.every's metrics; drop "
                              "eval.every and translate a folder with `ganlab translate` (scripts/results_cyclegan.py scores "
                              "translations with a classifier).")
        if int(t.n_critic) != 1:
            raise GanlabError(f"model={m.name} alternates one G and one D update; use train.n_critic=1.")
        g_ab, g_ba, d_a, d_b = (net.to(device) for net in cg.build(m, tuple(source.shape)))
        self.nets = {"generator_ab": g_ab, "generator_ba": g_ba, "discriminator_a": d_a, "discriminator_b": d_b}
        conv = is_convolutional(g_ab)
        self.optimizers = {
            "g": make_optimizer(cfg.optimizer, [*g_ab.parameters(), *g_ba.parameters()], "g", device, conv),
            "d": make_optimizer(cfg.optimizer, [*d_a.parameters(), *d_b.parameters()], "d", device, conv),
        }
        self.ema = make_emas(tricks, self.nets, ["generator_ab", "generator_ba"])
        self.loss_fn, self.d_kw, self.g_kw = get_loss(cfg.loss)
        self.adv_weight, self.lambda_cycle = float(m.adv_weight), float(m.lambda_cycle)
        self.lambda_identity = float(m.lambda_identity)
        pool = int(m.pool_size)
        if pool < 0:
            raise GanlabError(f"model.pool_size={pool} is not valid: give the number of images kept (the paper: 50; 0: off).")
        self.pools = {"a": ImagePool(pool, tuple(source.shape), device), "b": ImagePool(pool, tuple(source.shape), device)}
        sizes = source.load()
        self.lr_schedule, self.epoch_steps = epoch_schedule(m, max(len(sizes["a"]), len(sizes["b"])), int(t.batch_size),
                                                            int(t.steps))
        self.device, self.batch = device, local_batch(int(t.batch_size))
        self.phases = (Phase("G", "g", ("generator_ab", "generator_ba"), self.g_loss),
                       Phase("D", "d", ("discriminator_a", "discriminator_b"), self.d_loss))
        self.images_per_step = 2 * self.batch * 3  # per domain: a real and a fake through D, a fake through D in G
        n_fixed = max(1, min(8, int(t.n_samples)))
        fixed_a, fixed_b = source.fixed(n_fixed)
        self.fixed = {"a": to_unit_range(fixed_a).to(device), "b": to_unit_range(fixed_b).to(device)}
        self._step_data: tuple | None = None  # the G phase's reals and fakes, for the D phase of the same step

    # ------------------------------------------------------------------------------ the phases
    def g_loss(self, step: int, rt: Runtime):
        real_a, real_b = rt.next_batch()
        g_ab, g_ba = self.fwd["generator_ab"], self.fwd["generator_ba"]
        d_a, d_b = self.fwd["discriminator_a"], self.fwd["discriminator_b"]
        with rt.autocast():
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
            adv_ab = self.loss_fn.g(d_b(fake_b).float(), **self.g_kw)
            adv_ba = self.loss_fn.g(d_a(fake_a).float(), **self.g_kw)
            cyc_a, cyc_b = cycle_loss(real_a, rec_a.float()), cycle_loss(real_b, rec_b.float())
            logs = {"Loss/G_adv_ab": adv_ab, "Loss/G_adv_ba": adv_ba, "Loss/cycle_a": cyc_a, "Loss/cycle_b": cyc_b}
            total = self.adv_weight * (adv_ab + adv_ba) + self.lambda_cycle * (cyc_a + cyc_b)
            if self.lambda_identity > 0:
                idt_a = identity_loss(real_a, g_ba(real_a).float())  # G_BA should leave A's images as they are
                idt_b = identity_loss(real_b, g_ab(real_b).float())
                total = total + self.lambda_identity * self.lambda_cycle * (idt_a + idt_b)
                logs.update({"Loss/identity_a": idt_a, "Loss/identity_b": idt_b})
        self._step_data = (real_a, real_b, fake_a.detach(), fake_b.detach())
        return total, {"Loss/G": total, **logs}

    def d_loss(self, step: int, rt: Runtime):
        if self._step_data is None:
            raise RuntimeError("the D phase runs after the G phase of the same step")
        real_a, real_b, fake_a, fake_b = self._step_data
        self._step_data = None
        pooled_a, pooled_b = self.pools["a"].query(fake_a), self.pools["b"].query(fake_b)
        d_a, d_b, loss = self.fwd["discriminator_a"], self.fwd["discriminator_b"], self.loss_fn
        with rt.autocast():
            ra, fa = d_a(real_a).float(), d_a(pooled_a.to(real_a.dtype)).float()
            rb, fb = d_b(real_b).float(), d_b(pooled_b.to(real_b.dtype)).float()
        loss_a, loss_b = loss.d(ra, fa, **self.d_kw), loss.d(rb, fb, **self.d_kw)
        logs = {f"{tag}_a": v for tag, v in d_score_logs(loss, ra, fa).items()}
        logs.update({f"{tag}_b": v for tag, v in d_score_logs(loss, rb, fb).items()})
        return loss_a + loss_b, {"Loss/D": loss_a + loss_b, "Loss/D_a": loss_a, "Loss/D_b": loss_b, **logs}

    # ---------------------------------------------------------------------- reporting, sampling
    def describe(self) -> str:
        g, d = self.nets["generator_ab"], self.nets["discriminator_a"]
        return (f"CycleGAN A <-> B | loss {self.loss_fn.name} x {self.adv_weight:g} + cycle {self.lambda_cycle:g} + "
                f"identity {self.lambda_identity * self.lambda_cycle:g} | pool {self.pools['a'].size} | "
                f"2 G of {sum(p.numel() for p in g.parameters()):,} params, 2 D of {sum(p.numel() for p in d.parameters()):,}")

    def translator(self, direction: str):
        name = "generator_ab" if direction == "a2b" else "generator_ba"
        return self.ema[name].module if self.ema else self.nets[name]

    def snapshot(self, step: int) -> dict[str, Tensor]:
        """Rows on the fixed images: Samples/a2b real A, fake B, reconstructed A; Samples/b2a real B, fake A,
        reconstructed B."""
        out = {}
        for direction, src, there, back in (("a2b", "a", "a2b", "b2a"), ("b2a", "b", "b2a", "a2b")):
            g, f = self.translator(there), self.translator(back)  # instance norm: no train/eval difference
            with torch.no_grad():
                real = self.fixed[src]
                fake = g(real)
                rows = torch.cat([real, fake, f(fake)])
            out[f"Samples/{direction}"] = image_grid(rows, nrow=len(real))
        return out

    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        raise GanlabError("model=cyclegan translates images; it has no latent sampler (use ganlab translate).")

    def state_dict(self) -> dict:
        return {f"pool_{k}": pool.state_dict() for k, pool in self.pools.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, pool in self.pools.items():
            if f"pool_{k}" in state:
                pool.load_state_dict(state[f"pool_{k}"])

    @classmethod
    def load_generator(cls, cfg, state: dict, ema: bool, device):
        raise GanlabError("model=cyclegan translates images instead of sampling them from noise: use "
                          "`ganlab translate run=RUN_DIR in=DIR out=DIR [direction=a2b|b2a]`.")

"""PG-GAN's objective (Karras et al. 2018): grow G and D from 4x4, fading each new resolution in.

The growth is a pure function of the step (`GrowthSchedule`): 4x4 for model.stable_images images,
then for each doubling a fade of model.fade_images images (alpha 0 -> 1) and a stabilization of
model.stable_images images, with model.batch_sizes images per step at each resolution. A resume
therefore lands at the exact resolution and alpha; the position is also kept in the checkpoint's
objective state and checked against the schedule on resume.

A step is one D update then one G update (n_critic 1 in the paper), each on its own batch. The reals
are taken to the current resolution on the device (2x2 average pooling per halving) and, during a
fade, blended like G's output: lerp(upsample(avgpool(x)), x, alpha). D's loss is the configured one
(the paper: WGAN-GP) plus the drift term model.drift * E[D(x)^2] (epsilon 0.001).
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab.data.sources import build_source
from ganlab.distributed import local_batch
from ganlab.errors import GanlabError
from ganlab.losses import d_score_logs, get_loss, get_penalty
from ganlab.models import generate, sample_z
from ganlab.models import progressive as pro
from ganlab.models.base import pad_border
from ganlab.objectives.base import Objective, Phase, Runtime, generator_weights, check_karras_family
from ganlab.optim import make_optimizers
from ganlab.tricks import make_emas
from ganlab.viz import image_grid

log = logging.getLogger("ganlab")


@dataclass(frozen=True)
class Stage:
    res: int
    fading: bool
    first_step: int
    steps: int  # 0 for the last stage: it lasts until train.steps
    batch: int
    images_before: int  # images D saw (real) before the stage's first step


class GrowthSchedule:
    """Which resolution, alpha and batch size a step trains at (steps count from 1). A stage ends at the
    first step at which the images shown reach the configured running total (as the official code
    counts kimg), so per-stage rounding never accumulates."""

    def __init__(self, resolution: int, fade_images: int, stable_images: int, batch_sizes: list[int]):
        self.resolution, self.stages = resolution, []
        step, images, target = 1, 0, 0  # target: the configured image count at which a stage ends
        for i, res in enumerate(pro.resolutions(resolution)):
            batch = int(batch_sizes[min(i, len(batch_sizes) - 1)])
            for fading in ((False,) if res == 4 else (True, False)):
                last = res == resolution and not fading
                target += fade_images if fading else stable_images
                n = 0 if last else max(0, math.ceil((target - images) / batch))  # cumulative: no rounding drift
                if n or last:
                    self.stages.append(Stage(res, fading, step, n, batch, images))
                step, images = step + n, images + n * batch
        self._firsts = [s.first_step for s in self.stages]
        self.stage_starts = frozenset(self._firsts[1:])  # the steps that begin a new stage (not the first)

    def stage(self, step: int) -> Stage:
        return self.stages[max(0, bisect.bisect_right(self._firsts, step) - 1)]

    def at(self, step: int) -> tuple[int, float, int]:
        """(resolution, alpha, batch size) of `step`: alpha rises linearly over the fade and is 1 at its last step."""
        s = self.stage(step)
        alpha = min(1.0, (step - s.first_step + 1) / s.steps) if s.fading else 1.0
        return s.res, alpha, s.batch

    def images_before(self, step: int) -> int:
        s = self.stage(step)
        return s.images_before + (step - s.first_step) * s.batch

    @property
    def grown_at(self) -> int:
        """The first step at the full resolution with alpha 1 (after its fade)."""
        return self.stages[-1].first_step

    def is_last_at_resolution(self, step: int) -> bool:
        """The last step of a resolution's stabilization, before the next one fades in."""
        s = self.stage(step)
        return not s.fading and s.steps > 0 and step == s.first_step + s.steps - 1


def schedule_from(model_cfg, resolution: int) -> GrowthSchedule:
    for key in ("fade_images", "stable_images"):
        value = model_cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise GanlabError(f"model.{key}={value!r} is not valid: give a number of images >= 0 (the paper: 800000).")
    sizes = list(model_cfg.batch_sizes)
    if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in sizes):
        raise GanlabError(f"model.batch_sizes={sizes} is not valid: give the batch size at 4x4, 8x8, ... as positive "
                          "integers, e.g. [64,64,32,16] (the last one holds for the larger resolutions).")
    return GrowthSchedule(resolution, int(model_cfg.fade_images), int(model_cfg.stable_images), sizes)


class Progressive(Objective):
    ddp_find_unused = True  # the layers of resolutions not grown yet (or left behind) take no part in a step

    def __init__(self, cfg, source, device: torch.device):
        super().__init__()
        m, t, tricks = cfg.model, cfg.train, cfg.tricks
        check_karras_family(cfg, source, "pixel norm, the minibatch stddev and the drift term")
        self.resolution, self.pad = pro.geometry(m, tuple(source.shape))
        self.schedule = schedule_from(m, self.resolution)
        if not getattr(source, "in_memory", True):  # a folder is read in batches of train.batch_size: each stage's must be a multiple
            odd = sorted({s.batch for s in self.schedule.stages if s.batch % int(t.batch_size)})
            if odd:
                raise GanlabError(f"model.batch_sizes holds {odd}, not multiples of train.batch_size={t.batch_size} "
                                  f"(the unit {source.name} is read in); set train.batch_size to a divisor of every "
                                  "batch size, e.g. train.batch_size=4.")
        self.steps_total = int(t.steps)
        g, d = pro.build(m, tuple(source.shape), self.resolution)
        g, d = g.to(device), d.to(device)
        self.loss_fn, self.d_kw, self.g_kw = get_loss(cfg.loss)
        self.penalty, self.penalty_name = get_penalty(cfg.penalty), cfg.penalty.name
        self.drift = float(m.drift)
        self.reset_optimizers = bool(m.get("reset_optimizers", True))
        opt_g, opt_d = make_optimizers(cfg.optimizer, g, d, device)
        self.nets = {"generator": g, "discriminator": d}
        self.optimizers = {"g": opt_g, "d": opt_d}
        self.ema = make_emas(tricks, self.nets, ["generator"])
        self.device, self.z_dim, self.n_critic = device, int(m.z_dim), int(t.n_critic)
        self.step = 0
        self.phases = (Phase("D", "d", ("discriminator",), self.d_loss, repeats=self.n_critic),
                       Phase("G", "g", ("generator",), self.g_loss))
        self.fixed_z = sample_z(int(t.n_samples), self.z_dim, torch.Generator().manual_seed(cfg.seed + 1)).to(device)
        if self.schedule.grown_at > self.steps_total:
            res, alpha, _ = self.schedule.at(self.steps_total)
            log.warning(f"train.steps={self.steps_total} ends at {res}x{res} (alpha {alpha:.2f}) before G has grown to "
                        f"{self.resolution}x{self.resolution} at step {self.schedule.grown_at}: raise train.steps or "
                        "lower model.fade_images / model.stable_images.")

    # ------------------------------------------------------------------------------ the phases
    def _at(self, step: int):
        """(resolution, alpha for the nets, batch): alpha a 0-d device tensor while fading (one compiled
        graph for the whole fade), the float 1.0 otherwise (no blending at all)."""
        self.step = step
        res, alpha, batch = self.schedule.at(step)
        # the stage's batch is global (model.batch_sizes); under torchrun each rank trains on its share
        return res, (torch.full((), alpha, device=self.device) if alpha < 1.0 else 1.0), local_batch(batch, "model.batch_sizes entry")

    def attach(self, batches) -> None:
        """Every stage's batch that train.steps reaches is checked now, against the data's size and the
        processes, so a run does not fail hours in when its stage starts."""
        for s in self.schedule.stages:
            if s.first_step <= self.steps_total:
                batches.check(s.batch, f"model.batch_sizes' entry for {s.res}x{s.res} (from step {s.first_step})")

    def after_step(self, step: int) -> None:
        """The official code's reset_opt_for_new_lod (model.reset_optimizers): when step + 1 starts a stage (a
        fade-in or a stabilization), both optimizers forget their state (Adam's moments and step counts), as
        theirs does whenever the level of detail crosses an integer. The state is the optimizers' own and is
        checkpointed as such, so a resume lands on the same moments."""
        if self.reset_optimizers and step + 1 in self.schedule.stage_starts:
            for opt in self.optimizers.values():
                opt.state.clear()

    def reals(self, x: Tensor, res: int, alpha) -> Tensor:
        """Real images at the current resolution, blended across the fade as G's output is."""
        x = pad_border(x, self.pad)
        if res < x.shape[-1]:
            x = F.avg_pool2d(x, x.shape[-1] // res)
        if isinstance(alpha, Tensor):
            x = torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest"), x, alpha)
        return x

    def d_loss(self, step: int, rt: Runtime):
        res, alpha, batch = self._at(step)
        g, d, loss = self.fwd["generator"], self.fwd["discriminator"], self.loss_fn
        real = self.reals(rt.next_batch(batch)[0], res, alpha)
        with rt.autocast():
            with torch.no_grad():
                fake = g(sample_z(batch, self.z_dim, device=self.device), res=res, alpha=alpha).to(real.dtype)
            d_real, d_fake = d(real, alpha=alpha).float(), d(fake, alpha=alpha).float()
        loss_d = loss.d(d_real, d_fake, **self.d_kw)
        logs = {}
        if self.drift:
            drift = d_real.pow(2).mean()
            loss_d = loss_d + self.drift * drift
            logs["Loss/drift"] = drift
        if self.penalty is not None:
            fn, weight, kw = self.penalty
            raw_d = self.nets["discriminator"]  # the double backward stays eager
            with rt.autocast():
                pen = fn(lambda x: raw_d(x, alpha=alpha), real, fake, scale=rt.loss_scale("d"), **kw)
            loss_d = loss_d + weight * pen
            logs["Loss/penalty"] = pen
        return loss_d, {"Loss/D": loss_d, **logs, **d_score_logs(loss, d_real, d_fake)}

    def g_loss(self, step: int, rt: Runtime):
        res, alpha, batch = self._at(step)
        with rt.autocast():
            fake = self.fwd["generator"](sample_z(batch, self.z_dim, device=self.device), res=res, alpha=alpha)
            score = self.fwd["discriminator"](fake.float(), alpha=alpha).float()
        loss_g = self.loss_fn.g(score, **self.g_kw)
        return loss_g, {"Loss/G": loss_g}

    @property
    def images_per_step(self) -> int:
        return local_batch(self.schedule.at(max(self.step, 1))[2]) * (2 * self.n_critic + 1)  # this rank's

    # ---------------------------------------------------------------------- reporting, sampling
    def describe(self) -> str:
        g, d = self.nets["generator"], self.nets["discriminator"]
        s = self.schedule
        return (f"progressive 4 -> {self.resolution} px (grown at step {s.grown_at:,}, "
                f"{s.images_before(s.grown_at):,} images) | loss {self.loss_fn.name}"
                f"{' + ' + self.penalty_name if self.penalty else ''}{f' + drift {self.drift:g}' if self.drift else ''} | "
                f"G {sum(p.numel() for p in g.parameters()):,} params, D {sum(p.numel() for p in d.parameters()):,} params")

    def batch_description(self, batch_size: int) -> str:
        return "batch " + ", ".join(f"{s.batch} at {s.res}px" for s in self.schedule.stages if not s.fading)

    def scalars(self, step: int) -> dict[str, float]:
        res, alpha, batch = self.schedule.at(step)
        return {"Schedule/resolution": float(res), "Schedule/alpha": alpha, "Schedule/batch_size": float(batch),
                "Schedule/kimg": (self.schedule.images_before(step) + batch) / 1000.0}

    def snapshot_due(self, step: int) -> bool:
        return self.schedule.is_last_at_resolution(step)

    def _g(self):
        return self.ema["generator"].module if self.ema else self.nets["generator"]

    def sampler(self) -> pro.GrownSampler:
        """G (its EMA) at the point of growth of the last step trained."""
        res, alpha, _ = self.schedule.at(max(self.step, 1))
        return pro.GrownSampler(self._g(), res, alpha, self.pad)

    def snapshot(self, step: int) -> dict[str, Tensor]:
        """The fixed latents at the current resolution, upsampled to the full one: under
        Samples/res_NNNN (one series per resolution) and, cropped to the data's size, Samples/fixed_z."""
        g = self._g()
        res, alpha, _ = self.schedule.at(step)
        was_training = g.training
        g.eval()
        with torch.no_grad():
            grown = pro.to_full_size(g(self.fixed_z, res=res, alpha=alpha), self.resolution)
        g.train(was_training)
        return {f"Samples/res_{res:04d}": image_grid(grown), "Samples/fixed_z": image_grid(pro.crop(grown, self.pad))}

    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        return generate(self.sampler(), n, device=self.device, generator=generator)[0]

    def state_dict(self) -> dict:
        res, alpha, batch = self.schedule.at(max(self.step, 1))
        return {"step": self.step, "resolution": res, "alpha": alpha, "batch": batch,
                "images": self.schedule.images_before(max(self.step, 1)) + batch}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        step = int(state["step"])
        res, alpha, _ = self.schedule.at(max(step, 1))
        if (res, alpha) != (state["resolution"], state["alpha"]):
            raise GanlabError(f"the checkpoint is at {state['resolution']}x{state['resolution']} (alpha "
                              f"{state['alpha']:.4f}) at step {step}, but this config's schedule puts that step at "
                              f"{res}x{res} (alpha {alpha:.4f}); resume with the run's own model.* settings.")
        self.step = step

    @classmethod
    def load_generator(cls, cfg, state: dict, ema: bool, device):
        g, pad = karras_generator(cfg, state, ema, pro.build)
        res, alpha, _ = schedule_from(cfg.model, g.resolution).at(max(int(state["step"]), 1))
        return pro.GrownSampler(g, res, alpha, pad).to(device).eval()


def karras_generator(cfg, state: dict, ema: bool, build) -> tuple:
    """(G of a Karras family (pggan, stylegan) with a checkpoint's weights, the data's padding), rebuilt by
    `build(model_cfg, shape, resolution)` from the saved config: no data is read."""
    source = build_source(cfg.dataset)  # sources read no data until asked to
    resolution, pad = pro.geometry(cfg.model, tuple(source.shape))
    g, _ = build(cfg.model, tuple(source.shape), resolution)
    g.load_state_dict(generator_weights(state, ema))
    return g, pad

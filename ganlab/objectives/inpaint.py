"""Inpainting with a conditional GAN (`model=inpaint`): G fills the hole of a masked image.

G sees the masked image x (1 - m) (the hole at 0, mid-grey) and the mask m as a channel, and returns
a whole image; the result keeps the known pixels: filled = x (1 - m) + G(x (1 - m), m) m. Two recipes
(`model.recipe`), each with its paper's networks and weights (`model.lambda_rec` / `model.lambda_adv`
null = the recipe's):
- `context_encoder` (Pathak et al. 2016): encoder-decoder G, a global DCGAN D on the filled image,
  L2 reconstruction on the hole x 0.999 + adversarial x 0.001, central square hole;
- `pix2pix` (Isola et al. 2017): U-Net G with dropout, a 70x70 PatchGAN D on the pair (masked input,
  image), L1 reconstruction on the hole x 100 + adversarial x 1.
The reconstruction terms are means over the hole's pixels only (the gradient outside the hole is
zero: those pixels are given, not predicted). `model.lambda_adv=0` trains the reconstruction alone
(no D): the papers' L2/L1-only ablations.

A step: phase "D" (a fresh real batch, masks drawn on the device from the torch RNG, D on real
images vs filled ones), then phase "G" on the same batch and masks (reconstruction + adversarial),
as pix2pix's `optimize_parameters` orders them. Masks: `model.mask` center | random_box | free_form
with `model.mask_ratio` (ganlab.data.masks). The evaluation scores FD (and the other feature
metrics) of the filled images against the reference reals they were made from, plus PSNR and SSIM
on the hole (ganlab.metrics.restoration), on a fixed set of masks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ganlab.data import masks as masklib
from ganlab.distributed import local_batch
from ganlab.errors import GanlabError
from ganlab.losses import d_score_logs, get_loss
from ganlab.metrics.restoration import hole_scores
from ganlab.models import inpaint as nets
from ganlab.objectives.base import Objective, Phase, Runtime, check_image_to_image, generator_weights
from ganlab.optim import make_optimizer
from ganlab.tricks import make_emas
from ganlab.viz import image_grid

RECIPES = {
    "context_encoder": {"generator": "encoder_decoder", "discriminator": "global", "reconstruction": "l2",
                        "lambda_rec": 0.999, "lambda_adv": 0.001, "d_scale": 1.0, "test_mode": "eval"},
    # pix2pix's D loss is (real + fake) / 2 (the authors' backward_D: "slows down the rate at which D learns")
    # and at test time G runs as in training (the paper, section 3.1: dropout on, batch norm with the test batch's
    # statistics; the authors' test.py without --eval, one image at a time)
    "pix2pix": {"generator": "unet", "discriminator": "patch", "reconstruction": "l1",
                "lambda_rec": 100.0, "lambda_adv": 1.0, "d_scale": 0.5, "test_mode": "train"},
}


TEST_MODES = ("eval", "train")


def recipe(model_cfg) -> dict:
    """The recipe's settings with the config's lambda_rec / lambda_adv where those are set."""
    name = model_cfg.recipe
    if name not in RECIPES:
        raise GanlabError(f"model.recipe={name!r} is not valid: use {' or '.join(RECIPES)}.")
    out = dict(RECIPES[name], name=name)
    for key in ("lambda_rec", "lambda_adv"):
        value = model_cfg.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise GanlabError(f"model.{key}={value!r} is not valid: give a weight >= 0 (null: the recipe's, "
                                  f"{RECIPES[name][key]:g}).")
            out[key] = float(value)
    mode = model_cfg.get("test_mode")
    if mode is not None:
        if mode not in TEST_MODES:
            raise GanlabError(f"model.test_mode={mode!r} is not valid: use eval (running statistics, no dropout), train "
                              "(the pix2pix paper's: dropout and each image's own statistics) or null (the recipe's: "
                              f"{RECIPES[name]['test_mode']}).")
        out["test_mode"] = mode
    if out["lambda_rec"] == 0 and out["lambda_adv"] == 0:
        raise GanlabError("model.lambda_rec=0 and model.lambda_adv=0 leave G nothing to learn; keep one of them > 0.")
    return out


def composite(masked: Tensor, fill: Tensor, mask: Tensor) -> Tensor:
    """The known pixels of `masked` outside the hole, `fill` inside it: x (1 - m) + G m."""
    return torch.lerp(masked, fill.to(masked.dtype), mask)


def hole_reconstruction(filled: Tensor, real: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Mean |filled - real| (l1) or (filled - real)^2 (l2) over the hole's pixels and channels only."""
    diff = (filled - real).abs() if kind == "l1" else (filled - real).square()
    m = mask.expand_as(diff)
    return (diff * m).sum() / m.sum().clamp_min(1)


def mask_input(x: Tensor, mask: Tensor) -> Tensor:
    """The image with its hole set to 0 (mid-grey in [-1, 1]): what G and the pair D see."""
    return x * (1 - mask)


@torch.no_grad()
def fill(g, x: Tensor, mask: Tensor, batch_size: int = 256, seed: int = 0) -> Tensor:
    """x's holes filled by G (on its device), composited with the known pixels; returned on x's device.

    G runs as its `test_mode` attribute says (the recipe's, model.test_mode): "eval" (running statistics, no
    dropout), batch by batch; "train" (the pix2pix paper's test protocol: dropout on, batch norm with the
    statistics of the test batch, which the authors' test.py makes one image), image by image, its running
    statistics left as they were, and its dropout masks drawn from `seed` (the caller's random state is left
    as it was), so that the same G, images and holes give the same fill every time."""
    was_training, device = g.training, next(g.parameters()).device
    per_image = getattr(g, "test_mode", "eval") == "train"
    saved = {k: v.clone() for k, v in g.state_dict().items() if "running" in k or "num_batches" in k} if per_image else {}
    g.train(per_image)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=per_image):
            if per_image:
                torch.manual_seed(seed)
            out = []
            for xs, ms in zip(x.split(1 if per_image else batch_size), mask.split(1 if per_image else batch_size)):
                masked, ms = mask_input(xs, ms).to(device), ms.to(device)
                out.append(composite(masked, g(masked, ms).float(), ms).to(x.device))
    finally:
        g.train(was_training)
        if saved:
            g.load_state_dict(saved, strict=False)
    return torch.cat(out)


class Inpaint(Objective):
    samples_from_noise = False  # it fills holes in images
    data_kinds = ("image",)
    data_hint = ("needs images (it fills their holes): use mnist, fashion_mnist, cifar10, stacked_mnist or "
                 "image_folder.")

    def __init__(self, cfg, source, device: torch.device):
        super().__init__()
        m, t, tricks = cfg.model, cfg.train, cfg.tricks
        check_image_to_image(cfg, "the masked image")
        self.recipe = r = recipe(m)
        self.mask_kind, self.mask_ratio = str(m.mask), m.mask_ratio
        masklib.check(self.mask_kind, self.mask_ratio)
        self.mask_ratio = float(self.mask_ratio)
        g, d = nets.build(m, tuple(source.shape), r)
        g.test_mode = r["test_mode"]  # how `fill` runs it (an attribute, not state: the config holds it)
        self.nets = {"generator": g.to(device)}
        self.optimizers = {"g": make_optimizer(cfg.optimizer, list(g.parameters()), "g", device, True)}
        if d is not None:
            self.nets["discriminator"] = d.to(device)
            self.optimizers["d"] = make_optimizer(cfg.optimizer, list(d.parameters()), "d", device, True)
        self.ema = make_emas(tricks, self.nets, ["generator"])
        self.loss_fn, self.d_kw, self.g_kw = get_loss(cfg.loss)
        self.lambda_rec, self.lambda_adv = r["lambda_rec"], r["lambda_adv"]
        self.device, self.batch, self.size = device, local_batch(int(t.batch_size)), tuple(source.shape[1:])
        self.seed = int(cfg.seed)
        self.n_critic = int(t.n_critic)
        g_phase = Phase("G", "g", ("generator",), self.g_loss)
        self.phases = (g_phase,) if d is None else (
            Phase("D", "d", ("discriminator",), self.d_loss, repeats=self.n_critic), g_phase)
        self.images_per_step = 0 if d is None else self.batch * (2 * self.n_critic + 1)
        self.fixed: tuple[Tensor, Tensor] | None = None
        self._step_batch: tuple | None = None  # the D phase's batch and masks, for the G phase of the same step

    def attach(self, batches) -> None:
        """Eight fixed images (the data's first) with fixed masks, for the TensorBoard rows."""
        x = batches.preview(8)
        self.fixed = (x, self.draw_masks(len(x), torch.Generator().manual_seed(self.seed + 5)))

    def draw_masks(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return masklib.draw(self.mask_kind, n, self.size, self.mask_ratio, generator, self.device)

    # ------------------------------------------------------------------------------ the phases
    def _batch(self, rt: Runtime) -> tuple[Tensor, Tensor, Tensor]:
        x, _ = rt.next_batch()
        mask = self.draw_masks(len(x))
        return x, mask, mask_input(x, mask)

    def _d(self, x: Tensor, masked: Tensor, mask: Tensor) -> Tensor:
        d = self.fwd["discriminator"]
        return d(x, masked, mask) if self.recipe["discriminator"] == "patch" else d(x)

    def d_loss(self, step: int, rt: Runtime):
        x, mask, masked = self._step_batch = self._batch(rt)
        with rt.autocast():
            with torch.no_grad():
                filled = composite(masked, self.fwd["generator"](masked, mask), mask)
            d_real, d_fake = self._d(x, masked, mask).float(), self._d(filled, masked, mask).float()
        loss = self.recipe["d_scale"] * self.loss_fn.d(d_real, d_fake, **self.d_kw)
        return loss, {"Loss/D": loss, **d_score_logs(self.loss_fn, d_real, d_fake)}

    def g_loss(self, step: int, rt: Runtime):
        batch, self._step_batch = self._step_batch, None
        x, mask, masked = batch if batch is not None else self._batch(rt)
        with rt.autocast():
            filled = composite(masked, self.fwd["generator"](masked, mask).float(), mask)
            rec = hole_reconstruction(filled, x, mask, self.recipe["reconstruction"])
            total, logs = self.lambda_rec * rec, {"Loss/rec": rec}
            if "discriminator" in self.nets:
                adv = self.loss_fn.g(self._d(filled, masked, mask).float(), **self.g_kw)
                total = total + self.lambda_adv * adv
                logs["Loss/G_adv"] = adv
        return total, {"Loss/G": total, **logs}

    # ---------------------------------------------------------------------- reporting, sampling
    def describe(self) -> str:
        r, g = self.recipe, self.nets["generator"]
        terms = f"{r['reconstruction'].upper()} on the hole x {self.lambda_rec:g}"
        if "discriminator" in self.nets:
            d = self.nets["discriminator"]
            terms += (f" + {self.loss_fn.name} x {self.lambda_adv:g} | D {r['discriminator']} of "
                      f"{sum(p.numel() for p in d.parameters()):,} params")
        return (f"inpainting ({r['name']}) | mask {self.mask_kind} {self.mask_ratio:g} | {terms} | G {r['generator']} of "
                f"{sum(p.numel() for p in g.parameters()):,} params")

    def filler(self):
        return self.ema["generator"].module if self.ema else self.nets["generator"]

    def snapshot(self, step: int) -> dict[str, Tensor]:
        """Samples/inpaint: rows masked (the hole white), filled, real, on the fixed images and masks."""
        if self.fixed is None:
            return {}
        x, mask = self.fixed
        filled = fill(self.filler(), x, mask)
        shown = mask_input(x, mask) + mask  # the hole in white
        return {"Samples/inpaint": image_grid(torch.cat([shown, filled, x]), nrow=len(x))}

    def evaluation(self, n: int, generator: torch.Generator, real: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The reference reals' holes filled (masks from `generator`), and PSNR / SSIM on the holes."""
        return fill_and_score(self.filler(), real, self.mask_kind, self.mask_ratio, generator)

    @classmethod
    def evaluation_of_checkpoint(cls, cfg, state: dict, n: int, generator: torch.Generator, real: Tensor, ema: bool,
                                 device) -> tuple[Tensor, dict[str, float]]:
        g = load_filler(state, ema, device)
        m = cfg.model
        return fill_and_score(g, real, str(m.mask), float(m.mask_ratio), generator)

    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        raise GanlabError("model=inpaint fills images; it has no latent sampler (use ganlab inpaint).")

    @classmethod
    def load_generator(cls, cfg, state: dict, ema: bool, device):
        raise GanlabError("model=inpaint fills holes in images instead of sampling them from noise: use "
                          "`ganlab inpaint run=RUN_DIR in=IMAGE_OR_DIR mask=MASK_OR_DIR out=DIR`.")


def load_filler(state: dict, ema: bool = True, device="cpu"):
    """The G of an inpaint checkpoint, in eval mode (its config rebuilds it; no data is read)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(state["config"])
    if cfg.model.get("objective") != "inpaint":
        raise GanlabError(f"this needs a model=inpaint run; this one is model={cfg.model.name}.")
    ds = cfg.dataset
    g, _ = nets.build(cfg.model, (int(ds.channels), int(ds.resolution), int(ds.resolution)),
                      {**recipe(cfg.model), "lambda_adv": 0.0})
    g.load_state_dict(generator_weights(state, ema))
    g.test_mode = recipe(cfg.model)["test_mode"]
    return g.to(device).eval()


def fill_and_score(g, real: Tensor, kind: str, ratio: float, generator: torch.Generator):
    """(the filled reals on the CPU, {psnr_hole, ssim_hole}) with masks of `kind` drawn from `generator`."""
    mask = masklib.draw(kind, len(real), tuple(real.shape[-2:]), ratio, generator, "cpu")
    filled = fill(g, real.float(), mask)
    return filled, hole_scores(filled, real.float(), mask)

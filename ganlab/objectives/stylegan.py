"""StyleGAN2's objective (Karras et al. 2020; the official stylegan2-ada-pytorch StyleGAN2Loss and training loop):
the non-saturating logistic loss, lazy R1 and lazy path-length regularization, style mixing, EMA of G.

Phases, as the official training loop runs them:
- "D": softplus(D(G(z))) + softplus(-D(x)) on a real batch and a separate fake batch (n_critic 1 in the paper);
- "D_reg": R1 on a fresh real batch, gamma / 2 * E||grad D(x)||^2 (penalty=r1, penalty.weight = gamma / 2),
  every model.r1_every **D steps** (16; counted as train.n_critic D steps a loop step, a pure function of the
  step, so a resume continues the count), its loss multiplied by that interval (lazy regularization, sec. 3.1);
  model.r1_every <= 1: R1 in every D step instead;
- "G": softplus(-D(G(z))) through the frozen D;
- "G_reg": path-length regularization (model.pl_weight, the paper's 2; sec. 3.2) every model.pl_every G steps
  (4) on a batch of train.batch_size / model.pl_batch_shrink (2), scaled by the interval:
  a = lerp(a, mean |J_w^T y|, pl_decay) with y ~ N(0, I) / sqrt(pixels), penalty (|J_w^T y| - a)^2 with the
  gradient through the new a, as the official code has it. The running mean a is a device tensor in the
  objective's state, so a resume continues it exactly.
Lazily regularized optimizers get Adam's lr and betas adjusted as StyleGAN2 does: with c = k / (k + 1) for an
interval k, lr * c and betas ** c.

Style mixing (model.mixing_prob, 0.9): every fake batch takes a second latent whose mapping moves no average,
and the layers from a crossover drawn per batch (uniform in 1 .. num_ws - 1; num_ws, i.e. no mixing, with
probability 1 - p) read its w; the crossover is a device tensor used through torch.where: no host read. The
average w (truncation) moves with every G forward of training (beta 0.995), as a buffer of G.
Conditional (model.conditional=true): G's mapping embeds the class, D projects on D's own class mapping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab import distributed
from ganlab.distributed import local_batch
from ganlab.errors import GanlabError
from ganlab.losses import d_score_logs, get_loss, get_penalty
from ganlab.models import generate, sample_z
from ganlab.models import progressive as pro
from ganlab.models import stylegan as sg
from ganlab.models.base import pad_border
from ganlab.objectives.base import Objective, Phase, Runtime, check_karras_family, generator_weights
from ganlab.optim import make_optimizers
from ganlab.tricks import make_emas
from ganlab.viz import image_grid


def _interval(model_cfg, key: str) -> int:
    value = model_cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GanlabError(f"model.{key}={value!r} is not valid: give a number of steps (the paper: "
                          f"{16 if key == 'r1_every' else 4}; 0 or 1: regularize at every step, not lazily).")
    return max(1, value)


def lazy_adam(optimizer: torch.optim.Optimizer, every: int) -> None:
    """StyleGAN2's lazy regularization adjustment: lr * c and betas ** c, c = every / (every + 1)."""
    c = every / (every + 1)
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * c
        if "betas" in group:
            group["betas"] = tuple(b ** c for b in group["betas"])


def d_steps_cross(step: int, n_critic: int, every: int) -> bool:
    """Whether loop step `step` (1-based) completes a multiple of `every` D steps, at n_critic D steps a step."""
    return (step * n_critic) // every > ((step - 1) * n_critic) // every


def path_length_penalty(g: sg.StyleGenerator, z: Tensor, c: Tensor | None, pl_mean: Tensor, decay: float,
                        mixing: dict) -> tuple[Tensor, Tensor]:
    """(per-sample penalty (|J_w^T y| - a)^2, the new running mean a): the official StyleGAN2Loss's Greg, with
    the gradient flowing through a's dependence on this batch's lengths."""
    ws = g.ws(z, c, update_w_avg=True, **mixing)
    img = g.synthesis(ws)
    y = distributed.randn_like_rows(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
    lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
    mean = pl_mean.lerp(lengths.mean(), decay)
    return (lengths - mean).square(), mean


class StyleGAN(Objective):
    def __init__(self, cfg, source, device: torch.device):
        super().__init__()
        m, t, tricks = cfg.model, cfg.train, cfg.tricks
        check_karras_family(cfg, source, "the R1 penalty, path length, style mixing and the minibatch stddev",
                            conditional_ok=True)
        if cfg.penalty.name not in ("r1", "none"):
            raise GanlabError(f"model={m.name} regularizes D with R1: use penalty=r1 (penalty.weight = gamma / 2) or "
                              f"penalty=none, not penalty={cfg.penalty.name}.")
        self.resolution, self.pad = pro.geometry(m, tuple(source.shape))
        self.c_dim = int(source.num_classes) if m.get("conditional") else 0
        g, d = sg.build(m, tuple(source.shape), self.resolution, self.c_dim)
        g, d = g.to(device), d.to(device)
        self.loss_fn, self.d_kw, self.g_kw = get_loss(cfg.loss)
        self.penalty, self.penalty_name = get_penalty(cfg.penalty), cfg.penalty.name
        self.r1_every, self.pl_every = _interval(m, "r1_every"), _interval(m, "pl_every")
        self.pl_weight, self.pl_decay = float(m.pl_weight), float(m.pl_decay)
        self.mixing_prob = float(m.mixing_prob)
        if not 0.0 <= self.mixing_prob <= 1.0:
            raise GanlabError(f"model.mixing_prob={self.mixing_prob} is not valid: give a probability (the paper: 0.9).")
        opt_g, opt_d = make_optimizers(cfg.optimizer, g, d, device)
        self.lazy_r1 = self.penalty is not None and self.r1_every > 1
        self.lazy_pl = self.pl_weight > 0 and self.pl_every > 1
        if self.lazy_r1:
            lazy_adam(opt_d, self.r1_every)
        if self.lazy_pl:
            lazy_adam(opt_g, self.pl_every)
        self.nets = {"generator": g, "discriminator": d}
        self.optimizers = {"g": opt_g, "d": opt_d}
        self.ema = make_emas(tricks, self.nets, ["generator"])
        self.device, self.z_dim, self.n_critic, self.batch = device, int(m.z_dim), int(t.n_critic), local_batch(int(t.batch_size))
        self.pl_batch = max(1, self.batch // max(1, int(m.pl_batch_shrink)))
        self.pl_mean = torch.zeros((), device=device)
        self.phases = self._phases()
        self.images_per_step = self.batch * (2 * self.n_critic + 1)
        self.fixed_z = sample_z(int(t.n_samples), self.z_dim, torch.Generator().manual_seed(cfg.seed + 1)).to(device)
        self.fixed_c = self._onehot(torch.arange(int(t.n_samples), device=device) % max(self.c_dim, 1))
        self.seed = int(cfg.seed)

    def _phases(self) -> tuple[Phase, ...]:
        phases = [Phase("D", "d", ("discriminator",), self.d_loss, repeats=self.n_critic)]
        if self.lazy_r1:
            every, nc = self.r1_every, self.n_critic
            phases.append(Phase("D_reg", "d", ("discriminator",), self.d_reg, every=every, through_ddp=False,
                                due=lambda step: d_steps_cross(step, nc, every)))
        phases.append(Phase("G", "g", ("generator",), self.g_loss))
        if self.pl_weight > 0:
            phases.append(Phase("G_reg", "g", ("generator",), self.g_reg, every=self.pl_every, through_ddp=False))
        return tuple(phases)

    # ------------------------------------------------------------------------------ the phases
    def _onehot(self, y: Tensor | None) -> Tensor | None:
        return None if not self.c_dim or y is None else F.one_hot(y.long(), self.c_dim).float()

    def _labels(self, n: int) -> Tensor | None:
        """Classes for a fake batch: drawn uniformly (the official code draws them from the data's labels)."""
        if not self.c_dim:
            return None
        return self._onehot(distributed.randint_rows(self.c_dim, n, device=self.device))

    def _mixing(self, z: Tensor) -> dict:
        """G's style-mixing arguments for a batch: a second latent and the crossover, on the device."""
        if self.mixing_prob <= 0:
            return {}
        n_ws = self.nets["generator"].num_ws
        cutoff = torch.randint(1, n_ws, (), device=self.device)
        cutoff = torch.where(torch.rand((), device=self.device) < self.mixing_prob, cutoff, torch.full_like(cutoff, n_ws))
        return {"mix_z": distributed.randn_like_rows(z), "mix_cutoff": cutoff}

    def reals(self, batch: tuple) -> tuple[Tensor, Tensor | None]:
        x, y = batch[0], batch[1] if len(batch) > 1 else None
        return pad_border(x, self.pad), self._onehot(y)

    def _r1(self, real: Tensor, c: Tensor | None, rt: Runtime) -> Tensor:
        fn, _, kw = self.penalty
        raw_d = self.nets["discriminator"]  # the double backward stays eager
        with rt.autocast():
            return fn(lambda x: raw_d(x, c), real, None, scale=rt.loss_scale("d"), **kw)

    def d_loss(self, step: int, rt: Runtime):
        g, d, loss = self.fwd["generator"], self.fwd["discriminator"], self.loss_fn
        real, c_real = self.reals(rt.next_batch())
        z = sample_z(self.batch, self.z_dim, device=self.device)
        c = self._labels(self.batch)
        with rt.autocast():
            with torch.no_grad():
                fake = g(z, c, **self._mixing(z), update_w_avg=True).to(real.dtype)
            d_real, d_fake = d(real, c_real).float(), d(fake, c).float()
        loss_d = loss.d(d_real, d_fake, **self.d_kw)
        logs = {}
        if self.penalty is not None and not self.lazy_r1:  # R1 at every step, in the main phase
            pen = self._r1(real, c_real, rt)
            loss_d = loss_d + self.penalty[1] * pen
            logs[f"Loss/{self.penalty_name}"] = pen
        return loss_d, {"Loss/D": loss_d, **logs, **d_score_logs(loss, d_real, d_fake)}

    def d_reg(self, step: int, rt: Runtime):
        """Lazy R1: gamma / 2 * E||grad D(x)||^2 on a real batch, times the interval (in D steps)."""
        real, c = self.reals(rt.next_batch())
        pen = self._r1(real, c, rt)
        return self.penalty[1] * pen * self.r1_every, {f"Loss/{self.penalty_name}": pen}

    def g_loss(self, step: int, rt: Runtime):
        z = sample_z(self.batch, self.z_dim, device=self.device)
        c = self._labels(self.batch)
        with rt.autocast():
            fake = self.fwd["generator"](z, c, **self._mixing(z), update_w_avg=True)
            score = self.fwd["discriminator"](fake.float(), c).float()
        loss_g = self.loss_fn.g(score, **self.g_kw)
        return loss_g, {"Loss/G": loss_g}

    def g_reg(self, step: int, rt: Runtime):
        """Path-length regularization (StyleGAN2 eq. 4), in float32 and eager (a double backward)."""
        z = sample_z(self.pl_batch, self.z_dim, device=self.device)
        penalty, mean = path_length_penalty(self.nets["generator"], z, self._labels(self.pl_batch), self.pl_mean,
                                            self.pl_decay, self._mixing(z))
        with torch.no_grad():
            self.pl_mean.copy_(mean.detach())
        pen = penalty.mean()
        return pen * self.pl_weight * (self.pl_every if self.lazy_pl else 1), {"Loss/path_length": pen,
                                                                                "Loss/path_length_mean": self.pl_mean.clone()}

    # ---------------------------------------------------------------------- reporting, sampling
    def describe(self) -> str:
        g, d = self.nets["generator"], self.nets["discriminator"]
        reg = (f" + {self.penalty_name}{f' (lazy, every {self.r1_every} D steps)' if self.lazy_r1 else ''}"
               if self.penalty else "")
        pl = (f" + path length {self.pl_weight:g}{f' (every {self.pl_every} G steps)' if self.lazy_pl else ''}"
              if self.pl_weight else "")
        cond = f", {self.c_dim} classes" if self.c_dim else ""
        return (f"StyleGAN2 {self.resolution} px, {g.num_ws} ws, mixing {self.mixing_prob:g}{cond} | loss "
                f"{self.loss_fn.name}{reg}{pl} | G {sum(p.numel() for p in g.parameters()):,} params, "
                f"D {sum(p.numel() for p in d.parameters()):,} params")

    def _g(self) -> sg.StyleGenerator:
        return self.ema["generator"].module if self.ema else self.nets["generator"]

    def sampler(self) -> sg.StyleSampler:
        return sg.StyleSampler(self._g(), self.pad)

    def snapshot(self, step: int) -> dict[str, Tensor]:
        """The fixed latents (constant noise), and the three StyleGAN pictures:
        - Samples/style_mixing: row i takes the coarse styles (layers < num_ws / 2) of latent A_i, column j
          the fine styles of latent B_j; the top row shows the B_j, the left column the A_i;
        - Samples/noise_resampling: per row one w, its image under 7 noise draws, then the per-pixel std;
        - Samples/truncation: per row one latent, psi from 1 (left) to 0 (right): every row ends at the
          average w's image."""
        g, crop = self._g(), (lambda x: sg.crop(x, self.pad))
        was_training = g.training
        g.eval()
        with torch.no_grad():
            out = {"Samples/fixed_z": image_grid(crop(g(self.fixed_z, self.fixed_c, noise_mode="const")))}
            z = sample_z(8, self.z_dim, torch.Generator().manual_seed(self.seed + 5)).to(self.device)
            c = self.fixed_c[:8] if self.c_dim else None
            a = g.mapping(z[:4], None if c is None else c[:4])
            b = g.mapping(z[4:], None if c is None else c[4:])
            cut = g.num_ws // 2
            cells = [g.synthesis(sg.mix_ws(a[i:i + 1].expand(4, -1, -1), b, cut), "const") for i in range(4)]
            top = torch.cat([torch.full_like(cells[0][:1], -1.0), g.synthesis(b, "const")])
            rows = [torch.cat([g.synthesis(a[i:i + 1], "const"), cells[i]]) for i in range(4)]
            out["Samples/style_mixing"] = image_grid(crop(torch.cat([top, *rows])), nrow=5)
            torch.manual_seed(self.seed + 6)  # the loop samples aside from the training RNG streams
            imgs = g.synthesis(a[:3].repeat_interleave(7, dim=0), "random")
            draws = imgs.view(3, 7, *imgs.shape[1:])
            std = draws.std(dim=1)
            std = std / std.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8) * 2 - 1
            out["Samples/noise_resampling"] = image_grid(crop(torch.cat([draws, std[:, None]], 1).flatten(0, 1)), nrow=8)
            psis = torch.linspace(1.0, 0.0, 8).tolist()
            c4 = None if c is None else c[:4]
            strip = torch.stack([g.synthesis(g.mapping(z[:4], c4, psi=psi), "const") for psi in psis], dim=1)
            out["Samples/truncation"] = image_grid(crop(strip.flatten(0, 1)), nrow=8)
        g.train(was_training)
        return out

    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        return generate(self.sampler(), n, device=self.device, generator=generator)[0]

    def state_dict(self) -> dict:
        return {"pl_mean": self.pl_mean.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        if state and "pl_mean" in state:
            self.pl_mean.copy_(state["pl_mean"])

    @classmethod
    def load_generator(cls, cfg, state: dict, ema: bool, device):
        from ganlab.data.sources import build_source

        source = build_source(cfg.dataset)  # reads no data
        resolution, pad = pro.geometry(cfg.model, tuple(source.shape))
        c_dim = int(source.num_classes) if cfg.model.get("conditional") else 0
        g, _ = sg.build(cfg.model, tuple(source.shape), resolution, c_dim)
        g.load_state_dict(generator_weights(state, ema))
        how = cfg.get("sampling") or {}  # ganlab sample / eval: truncation=, truncation_cutoff=, noise=
        return sg.StyleSampler(g, pad, float(how.get("truncation", 1.0)), how.get("truncation_cutoff"),
                               how.get("noise", "random")).to(device).eval()

    @classmethod
    def describe_checkpoint_sampler(cls, cfg, state: dict, ema: bool) -> str:
        how = cfg.get("sampling") or {}
        psi, cutoff = float(how.get("truncation", 1.0)), how.get("truncation_cutoff")
        trunc = (f", truncation psi {psi:g}" + (f" on the first {cutoff} ws" if cutoff is not None else "")) if psi != 1 else ""
        return f"{super().describe_checkpoint_sampler(cfg, state, ema)}{trunc}, {how.get('noise', 'random')} noise"

"""The seam between the training loop and a model family.

The loop (`ganlab.train`) owns the run and knows nothing about what the networks are: the step
counter, data order, backward, grad scalers, optimizer steps, learning-rate decay, EMA updates,
the NaN guard, on-device log sums, checkpoints, resume, evaluation, signals.

An `Objective` owns what one training step *is* for its family:

- `nets`: its networks by name (checkpointed under those names; a phase unfreezes the ones it
  trains and freezes the rest);
- `optimizers`: by name (checkpointed as `opt_<name>`, each with its own grad scaler under fp16;
  `Grad/<NAME>_norm` is logged per optimizer);
- `ema`: EMA copies by net name (the loop updates each once per step in which its net was updated,
  checkpointed as `<name>_ema`);
- `phases`: what an update trains, with which optimizer, how often (`every`: lazy
  regularization) and how many times in a row (`repeats`: n_critic), and the function computing
  its loss and the scalars to log (0-d device tensors: the loop sums them on the device);
- forward passes through `self.fwd[name]`: under torchrun the nets a phase trains are
  DistributedDataParallel there (their gradients all-reduced in backward); a phase whose loss runs
  its nets some other way (a double-backward regularizer through `nets[name].method(...)`) says
  `through_ddp=False` and the loop all-reduces its gradients itself;
- schedules (PG-GAN's alpha, instance noise, ...) as pure functions of the step, so that nothing
  but the step needs saving for them; state that must persist (image pools, running means) in
  `state_dict()` as device tensors and plain containers (loads with `weights_only=True`);
- how to sample: `snapshot()` for TensorBoard grids, `generate()` for metrics, and the classmethod
  `load_generator()` for `ganlab sample` / `ganlab eval`, which need no loop and no data. The loop
  runs the first two aside from the training RNG streams (`torch.random.fork_rng`), so how often a
  run samples never changes what it trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.tricks import uses_label_tricks


class Runtime(Protocol):
    """What the loop lends a phase's loss function."""

    device: torch.device

    def next_batch(self, n: int | None = None) -> tuple:
        """The next training batch (x, y) from the run's data, in the order a resume restores: n samples
        (default train.batch_size; disk-backed data: a multiple of it), x in [-1, 1] on the device."""

    def autocast(self):
        """The run's mixed-precision context (train.amp) for forward passes."""

    def loss_scale(self, optimizer: str) -> Tensor | None:
        """fp16's current loss scale of that optimizer's grad scaler (None without fp16): input
        gradients taken inside a loss (gradient penalties) are taken of scaled scores, then unscaled."""


@dataclass(frozen=True)
class Phase:
    """One kind of update: `loss(step, runtime) -> (loss, {tag: 0-d tensor})`, minimised by
    `optimizer` over the nets in `trains` (all other nets frozen), `repeats` times in a row on steps
    where `step % every == 0` (or, when given, where `due(step)` is true: a schedule counted in other units,
    as StyleGAN's R1 every 16 D steps with n_critic D steps a loop step). `after` runs after each optimizer
    step (e.g. WGAN's weight clipping). A lazily run phase scales its own loss by its interval (StyleGAN2's
    lazy regularization)."""

    name: str
    optimizer: str
    trains: tuple[str, ...]
    loss: Callable[[int, Runtime], tuple[Tensor, dict[str, Tensor]]]
    repeats: int = 1
    every: int = 1
    after: Callable[[], None] | None = None
    # False: the loss does not run the trained nets through self.fwd (R1 or path length on the raw nets, whose
    # double backward leaves some parameters without a gradient, which DDP's reducer cannot finish on); under
    # torchrun the loop all-reduces this phase's gradients itself, as StyleGAN2-ADA does for every phase
    through_ddp: bool = True
    due: Callable[[int], bool] | None = None

    def runs_at(self, step: int) -> bool:
        return self.due(step) if self.due is not None else step % self.every == 0


class Objective:
    """Base class of a family's objective; see the module docstring for the contract."""

    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema: dict[str, object]  # net name -> ganlab.tricks.EMA
    phases: tuple[Phase, ...]
    images_per_step: int = 0  # images through the discriminator(s) per step, for Perf/images_per_s
    data_kinds: tuple[str, ...] = ("image", "points")  # the data sources it trains on (source.kind)
    data_hint = "trains on one set of images or 2D points."  # the refusal for other data: "model=NAME <hint>"
    samples_from_noise = True  # generate() draws from latents: the watchdog tracks the samples' diversity
    ddp_find_unused = False  # DDP's find_unused_parameters (PG-GAN: the layers of resolutions not yet grown)
    # step -> lr factor, or {optimizer name: lr factor}, in place of train.lr_decay_from's (CycleGAN's epochs
    # replace it; LapGAN's per-level epochs multiply it in)
    lr_schedule: Callable[[int], float | dict[str, float]] | None = None

    def __init__(self):
        self.nets, self.optimizers, self.ema, self.phases = {}, {}, {}, ()
        self._compiled: dict[str, Callable] | None = None
        self._ddp: dict[str, Callable] | None = None  # torchrun: the trained nets in DistributedDataParallel
        self._phase_fwd: dict[str, Callable] | None = None
        self._phase_cache: dict[tuple, dict] = {}

    @property
    def fwd(self) -> dict[str, Callable]:
        """Forward passes by net name: the nets, or their torch.compile'd wrappers (train.compile); under
        torchrun, within a phase, the nets it trains through DistributedDataParallel."""
        if self._phase_fwd is not None:
            return self._phase_fwd
        return self.nets if self._compiled is None else self._compiled

    def compile(self) -> None:
        """train.compile: forward passes through torch.compile (double backward stays eager)."""
        self._compiled = {name: torch.compile(net) for name, net in self.nets.items()}
        if self._ddp is not None:
            self._ddp = {name: torch.compile(ddp) for name, ddp in self._ddp.items()}
        self._phase_cache.clear()

    def distribute(self, wrap: Callable[[nn.Module, bool], nn.Module]) -> None:
        """torchrun (the loop calls this once): every net some phase trains gets a DDP wrapper, `wrap(net,
        find_unused)`; its forward serves `fwd` within the phases that train it."""
        trained = {name for phase in self.phases for name in phase.trains}
        self._ddp = {name: wrap(net, self.ddp_find_unused) for name, net in self.nets.items() if name in trained}
        self._phase_cache.clear()

    def undistribute(self) -> None:
        """The loop, when the run ends: drop the DDP wrappers. Each holds the process group through its reducer;
        left to the garbage collector (the objective's phases make reference cycles), one can outlive
        destroy_process_group into interpreter shutdown, where gloo's threads abort the process (SIGABRT)."""
        self._ddp, self._phase_fwd = None, None
        self._phase_cache.clear()

    def enter_phase(self, trains: tuple[str, ...]) -> None:
        """The loop, before a phase's loss under torchrun: `fwd` serves DDP for the nets in `trains`."""
        if self._ddp is None:
            return
        fwd = self._phase_cache.get(trains)
        if fwd is None:
            base = self.nets if self._compiled is None else self._compiled
            fwd = {name: self._ddp[name] if name in trains and name in self._ddp else base[name] for name in self.nets}
            self._phase_cache[trains] = fwd
        self._phase_fwd = fwd

    def leave_phase(self) -> None:
        self._phase_fwd = None

    def describe(self) -> str:
        """One line for the console: what trains, and how."""
        return type(self).__name__

    def batch_description(self, batch_size: int) -> str:
        """The batch size(s) for the start-up line."""
        return f"batch {batch_size}"

    def scalars(self, step: int) -> dict[str, float]:
        """Host-side values for logging steps (schedules): no device reads."""
        return {}

    def snapshot(self, step: int) -> dict[str, Tensor]:
        """TensorBoard images (C x H x W in [0, 1]) of the current state, by tag."""
        return {}

    def snapshot_due(self, step: int) -> bool:
        """A snapshot at this step besides the train.sample_every ones (a pure function of the step:
        e.g. PG-GAN's last step at each resolution, so every resolution has its grid)."""
        return False

    def attach(self, batches) -> None:
        """The run's training data (`batches.preview(n)`: its first n images), for objectives that need
        fixed real inputs for their snapshots (inpainting's rows). Called once, before training."""

    def after_step(self, step: int) -> None:
        """Called by the loop at the end of every step (after the EMA updates): e.g. tricks.self_ensemble's
        snapshots of G. No host syncs here."""

    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        """n samples for the metrics, drawn with `generator`."""
        raise NotImplementedError

    def sampler_description(self) -> str:
        """What makes the samples the evaluation scores (metrics.json's protocol, `generated_by`)."""
        return "EMA weights" if self.ema else "raw weights"

    def evaluation(self, n: int, generator: torch.Generator, real: Tensor) -> tuple[Tensor, dict[str, float]]:
        """What the evaluation scores: n samples for the run's scorer (compared with `real`, the reference
        set, on the CPU in [-1, 1]) and the family's own metrics (e.g. inpainting's PSNR on the holes it
        fills in `real`); samples None: nothing to score (optimal_d's G is fixed: only its own metrics).
        Default: `generate(n, generator)` and none."""
        return self.generate(n, generator), {}

    @classmethod
    def evaluation_of_checkpoint(cls, cfg, state: dict, n: int, generator: torch.Generator, real: Tensor, ema: bool,
                                 device) -> tuple[Tensor, dict[str, float]]:
        """`evaluation` for `ganlab eval` on a checkpoint (no loop, no training data). Default: n samples of
        `load_generator` (its noise inputs from the global RNG, seeded from `generator`) and no metrics of its own."""
        from ganlab.models import generate

        g = cls.load_generator(cfg, state, ema, device)
        torch.manual_seed(int(generator.initial_seed()))  # noise inputs (StyleGAN, LapGAN's finer levels)
        fake, _ = generate(g, n, generator=generator, device=device)
        return fake.float().cpu(), {}

    @classmethod
    def describe_checkpoint_sampler(cls, cfg, state: dict, ema: bool) -> str:
        """What `load_generator(cfg, state, ema)` samples with, for `ganlab eval`'s protocol."""
        kept_ema = any(key.endswith("_ema") and state[key] for key in state)  # generator_ema, generator_0_ema, ...
        return f"{'EMA' if ema and kept_ema else 'raw'} weights"

    def state_dict(self) -> dict:
        """State beyond nets, optimizers and EMA that a resume needs (plain containers, tensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @classmethod
    def load_generator(cls, cfg, state: dict, ema: bool, device) -> nn.Module:
        """The sampling network from a checkpoint (its config rebuilds it; no data is read):
        `g(z, y)` with attributes z_dim, conditional, num_classes, as `ganlab.models.generate` uses."""
        raise NotImplementedError


def check_karras_family(cfg, source, stabilizers: str, conditional_ok: bool = False) -> None:
    """The Karras families (pggan, stylegan) train on images with their own stabilizers and one D step per G
    step: one clear error, before any data is read, for 2D points, conditioning (unless `conditional_ok`:
    StyleGAN2's class-conditional networks) or the canon's label tricks; a warning for another n_critic."""
    m = cfg.model
    if source.kind != "image":
        raise GanlabError(f"model={m.name} needs images (its G builds them from 4x4 up); use mnist, fashion_mnist, "
                          "cifar10, stacked_mnist or image_folder.")
    if m.get("conditional") and not conditional_ok:
        raise GanlabError(f"model={m.name} is unconditional; use model.conditional=false (or model=cgan).")
    if m.get("conditional") and not getattr(source, "num_classes", None):
        raise GanlabError(f"model={m.name} model.conditional=true needs a labelled dataset ({source.name} has no "
                          "classes).")
    if uses_label_tricks(cfg.tricks) or float(cfg.tricks.instance_noise) > 0:
        raise GanlabError(f"model={m.name} does not use the label tricks or instance noise; drop those tricks.* "
                          f"overrides (its own stabilizers are {stabilizers}).")
    if int(cfg.train.n_critic) != 1:
        logging.getLogger("ganlab").warning(f"model={m.name} with train.n_critic={cfg.train.n_critic}: the paper "
                                            "alternates one D and one G step (and counts its schedules in steps).")


def check_image_to_image(cfg, conditioned_on: str) -> None:
    """The image-to-image families (cyclegan, inpaint) are conditioned on images: one clear error, before
    any data is read, for class labels, the canon's label tricks, instance noise or a gradient penalty."""
    m = cfg.model
    if uses_label_tricks(cfg.tricks) or float(cfg.tricks.instance_noise) > 0 or m.get("conditional"):
        raise GanlabError(f"model={m.name} is conditioned on {conditioned_on}, not on labels, and uses no label tricks "
                          "or instance noise; drop those overrides.")
    if cfg.penalty.name != "none":
        raise GanlabError(f"model={m.name} trains without a gradient penalty, as its paper does; use penalty=none.")


def generator_weights(state: dict, ema: bool) -> dict:
    """A checkpoint's generator weights: the EMA copy when the run kept one and `ema` is true, else the raw ones."""
    return state.get("generator_ema") if ema and state.get("generator_ema") else state["generator"]

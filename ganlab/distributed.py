"""Data-parallel training on PyTorch's own engine: torchrun (or a Slurm task's environment) starts one process
per device, `torch.distributed` joins them, DistributedDataParallel all-reduces every phase's gradients.

How a run on N processes relates to one on one process, by design:

- `train.batch_size` is the GLOBAL batch: each rank trains on its 1/N slice (`local_batch`), DDP averages
  the gradients, so the update is the mean over the global batch, as in one process.
- Every rank draws from the same torch RNG stream (the same seed), and every per-sample random draw in a
  step (latents, labels, penalty interpolation coefficients, instance noise, masks, flips, noise inputs)
  is drawn for the whole global batch, of which each rank keeps its own rows (`rows`). Data orders are one
  seeded permutation of which each rank takes its contiguous slice of every global batch. So the ranks'
  samples are disjoint and independent, and N processes see exactly the numbers one process would see:
  with the same global batch and seed, a run's first update equals the single-process one to float
  tolerance (the gradient all-reduce sums in another order), and a resume on another world size continues
  the same data order and noise.
- BatchNorm normalises with each rank's own batch statistics unless `train.sync_bn=true` (SyncBatchNorm:
  the statistics of the global batch, as one process has them).
- Rank 0 alone writes (TensorBoard, checkpoints, status.json, metrics.json, Hydra's files); decisions that
  end or redirect the loop (signals, the time budget, NaN rollbacks) are agreed on at logging steps.

Nothing here costs anything in a single process: `world() == 1` and every helper is the identity.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ganlab.errors import GanlabError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None


_STATE = Dist()


def env_world() -> int:
    """The world size the environment asks for (torchrun's WORLD_SIZE), before anything is set up."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise GanlabError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; start the processes with "
                          "torchrun --nproc_per_node N -m ganlab train ...") from None


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun (or a Slurm job through `slurm_env`) describes: NCCL when this rank
    gets a CUDA device, else gloo (CPU). Idempotent; a single process stays as it is."""
    global _STATE
    if _STATE.world > 1 or env_world() <= 1:
        return _STATE
    import torch.distributed as dist

    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise GanlabError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; start the "
                          "processes with torchrun --nproc_per_node N -m ganlab train ... (it sets them).")
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), env_world()
    use_cuda = torch.cuda.is_available() and device not in ("cpu", "mps")
    backend = os.environ.get("GANLAB_DIST_BACKEND") or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=int(os.environ.get("GANLAB_DIST_TIMEOUT_MIN", "30"))))
    _STATE = Dist(rank=rank, world=world, local_rank=local_rank, backend=backend)
    return _STATE


def teardown(meet: bool = True) -> None:
    """Leave the process group: first every object that still holds it (a DDP reducer in a reference cycle) is
    collected, then the ranks meet (no collective still in flight anywhere), then the group is destroyed. A
    process group that outlives destroy_process_group is freed at interpreter shutdown, where gloo's worker
    threads abort the process ("terminate called without an active exception", exit -6). `meet=False` (a rank
    that failed) skips the meeting: the others may be inside a collective that will never complete."""
    global _STATE
    if _STATE.world > 1:
        import gc

        import torch.distributed as dist

        if dist.is_initialized():
            gc.collect()
            if meet:
                dist.barrier()
            dist.destroy_process_group()
    _STATE = Dist()


def state() -> Dist:
    return _STATE


def world() -> int:
    return _STATE.world


def rank() -> int:
    return _STATE.rank


def is_main() -> bool:
    return _STATE.rank == 0


def device_for(name: str) -> str:
    """The device this rank trains on: its own GPU (LOCAL_RANK) under torchrun when the run asks for CUDA."""
    if _STATE.world > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{_STATE.local_rank % torch.cuda.device_count()}"
    return name


def local_batch(n: int, what: str = "train.batch_size") -> int:
    """This rank's share of a global batch of n."""
    w = _STATE.world
    if w == 1:
        return n
    if n % w:
        raise GanlabError(f"{what}={n} is the global batch and must split evenly over the {w} processes; use a "
                          f"multiple of {w}, e.g. {what}={max(w, n - n % w)}.")
    return n // w


def rows(draw, n: int, *shape, **kwargs) -> torch.Tensor:
    """`draw(n, *shape, **kwargs)` (torch.randn, torch.rand, ...) for this rank's n rows of the global batch:
    the whole global batch is drawn from the stream every rank shares and this rank keeps its own rows, so N
    ranks draw exactly what one process drawing the global batch would."""
    w = _STATE.world
    if w == 1:
        return draw(n, *shape, **kwargs)
    return draw(n * w, *shape, **kwargs)[_STATE.rank * n:(_STATE.rank + 1) * n]


def randint_rows(high: int, n: int, device=None) -> torch.Tensor:
    """Uniform integers in [0, high) for this rank's n rows of the global batch (see `rows`)."""
    w = _STATE.world
    if w == 1:
        return torch.randint(high, (n,), device=device)
    return torch.randint(high, (n * w,), device=device)[_STATE.rank * n:(_STATE.rank + 1) * n]


def randn_like_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.randn_like(x) for a batch x (rows first) of this rank's share of the global batch."""
    return rows(torch.randn, x.shape[0], *x.shape[1:], device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------------- collectives
def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if _STATE.world == 1:
        return t
    import torch.distributed as dist

    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def agree(flags: list[float], op: str = "max") -> list[float]:
    """The same decision on every rank: flags reduced over the ranks (max: any rank's; min: every rank's)."""
    if _STATE.world == 1:
        return flags
    t = all_reduce(torch.tensor(flags, dtype=torch.float64, device=_collective_device()), op)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    """Rank src's Python object, on every rank."""
    if _STATE.world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list | None:
    """Every rank's object, in rank order, on rank 0 (None on the others)."""
    if _STATE.world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * _STATE.world if _STATE.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather_objects(obj) -> list:
    if _STATE.world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * _STATE.world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _STATE.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _collective_device() -> torch.device:
    if _STATE.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def params_fingerprint(params) -> float:
    """A number that changes with any weight (sums of the weights and of their magnitudes, in float64): the
    ranks compare theirs on logging steps, since a net run outside DDP in a phase that trains it would let
    them drift apart silently."""
    with torch.no_grad():
        parts = [p.detach().double() for p in params]
        return float(sum(x.sum() + 1e-3 * x.abs().sum() for x in parts)) if parts else 0.0


def all_reduce_grads(params) -> None:
    """The mean over the ranks of these parameters' gradients, in one flattened collective (a phase that
    DDP cannot reduce, Phase.through_ddp=False). Parameters without a gradient stay without one (the same
    on every rank: the ranks run the same code)."""
    grads = [p.grad for p in params if p.grad is not None]
    if _STATE.world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat).div_(_STATE.world)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(modules) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, so all continue from what is saved."""
    if _STATE.world == 1:
        return
    import torch.distributed as dist

    for m in modules:
        for b in m.buffers():
            dist.broadcast(b, 0)


def weights_digest(tensors) -> str:
    """sha256 of the bytes of these tensors (a rank's weights)."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        if torch.is_tensor(t):
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_record(objective_state: dict, weights) -> dict:
    """What a checkpoint of an N-process run holds beyond rank 0's state: the world size, every rank's own
    objective state (CycleGAN's image pools differ per rank) and every rank's digest of its parameters (they
    must be one).
    Every rank calls this (it gathers); a mismatch of the weights is an error."""
    own = _to_cpu(objective_state)
    digest = weights_digest(weights)
    parts = all_gather_objects((own, digest))
    digests = [d for _, d in parts]
    if len(set(digests)) != 1:
        raise GanlabError(f"the {_STATE.world} processes hold different weights (digests {', '.join(d[:12] for d in digests)}); "
                          "a phase trained a net outside DDP. Run it through the objective's fwd, or declare the phase "
                          "with through_ddp=False.")
    return {"world": _STATE.world, "objective_ranks": [o for o, _ in parts], "weights_sha256": digests}


def objective_state_for_this_rank(state: dict) -> dict:
    """The objective state this rank resumes from: its own when the checkpoint was written by as many processes,
    else rank 0's (the one-line warning of `resume_note` says what that changes)."""
    rec = state.get("dist") or {}
    ranks = rec.get("objective_ranks")
    if ranks and int(rec.get("world", 1)) == _STATE.world:
        return ranks[_STATE.rank] or {}
    return state.get("objective") or {}


def resume_note(state: dict) -> str | None:
    """One line when a checkpoint written by another number of processes is resumed: what stays exact, what cannot."""
    saved = int((state.get("dist") or {}).get("world", 1))
    if saved == _STATE.world:
        return None
    return (f"resuming a checkpoint of {saved} process(es) on {_STATE.world}: the data order, the noise and the global "
            "batch continue exactly; what cannot be exact is the float summation order of the gradient all-reduce, "
            "BatchNorm's per-process batch statistics (unless train.sync_bn=true) and per-process objective state "
            "(e.g. CycleGAN's image pools), which every process takes from rank 0's.")


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------- wrapping
def wrap(net: torch.nn.Module, device: torch.device, find_unused: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around a net this rank trains (its gradients all-reduced in backward)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(net, device_ids=ids, output_device=device.index if ids else None, find_unused_parameters=find_unused,
               broadcast_buffers=True)


def sync_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """train.sync_bn: every BatchNorm of the net normalises with the global batch's statistics: torch's
    SyncBatchNorm on GPUs (NCCL); on the CPU (gloo), where torch's refuses to run, `GlobalBatchNorm`."""
    if _STATE.backend == "nccl":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return _convert(net)


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of every process (what torch's SyncBatchNorm computes, for the backends
    it does not run on: gloo on the CPU). Train mode: the mean, then the variance, of the global batch through
    autograd-aware all-reduces (torch.distributed.nn), so the gradients are those of one process normalising the
    whole batch; the running statistics are updated with them. Eval mode: plain BatchNorm."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _STATE.world == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce as ar

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = (x.numel() // x.shape[1]) * _STATE.world  # the local batches are equal by design
        mean = ar(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = ar(centred.square().sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / max(n - 1, 1), m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _convert(module: torch.nn.Module) -> torch.nn.Module:
    out = module
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


# ------------------------------------------------------------------------ Slurm (submitit) tasks
def slurm_env() -> bool:
    """Inside a submitit job with several tasks (hydra/launcher=submitit_slurm with tasks_per_node or nodes > 1):
    set torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) from submitit's job
    environment, so the task joins its job's other tasks as one DDP run. False when not in such a job."""
    if "WORLD_SIZE" in os.environ:
        return env_world() > 1
    if not any(k.startswith(("SUBMITIT_", "SLURM_JOB_ID")) for k in os.environ):
        return False  # not a submitit job: nothing to import
    try:
        import submitit

        job = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return False
    if job.num_tasks <= 1:
        return False
    master = job.hostnames[0] if getattr(job, "hostnames", None) else "127.0.0.1"
    # one port per job, the same on every task: derived from the job id
    port = 20000 + int("".join(c for c in str(job.job_id) if c.isdigit()) or "0") % 20000
    os.environ.update(RANK=str(job.global_rank), LOCAL_RANK=str(job.local_rank), WORLD_SIZE=str(job.num_tasks),
                      MASTER_ADDR=os.environ.get("MASTER_ADDR", master),
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    return True

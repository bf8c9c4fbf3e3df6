"""Which torch device a command runs on. Shared by training, sampling and evaluation."""

from __future__ import annotations

import os

import torch

from ganlab.errors import GanlabError


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is not there is a clear error."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GanlabError(f"device={name} was asked for but this machine has no CUDA device; use device=cpu or device=auto.")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise GanlabError(f"device={name}: there are only {torch.cuda.device_count()} CUDA devices; use device=cuda:0.")
    if name == "mps" and not has_mps:
        raise GanlabError("device=mps was asked for but MPS is not available here; use device=cpu or device=auto.")
    return torch.device(name)


# ------------------------------------------------------------------ one GPU per job of a local sweep
_LEASE = None  # (gpu id, the open lock file): held for the life of this worker process


def visible_gpus() -> list[str]:
    """The GPUs a local sweep may place jobs on: GANLAB_GPUS (e.g. 0,1,2,3), else CUDA_VISIBLE_DEVICES, else
    every GPU NVML counts (torch.cuda.device_count, which does not initialise CUDA before it has to)."""
    listed = os.environ.get("GANLAB_GPUS") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_count() -> int:
    """hydra/launcher=local_gpus: its joblib n_jobs, one job per GPU."""
    n = len(visible_gpus())
    if n == 0:
        raise GanlabError("hydra/launcher=local_gpus places one job per GPU and this machine has none; use "
                          "hydra/launcher=joblib on the CPU.")
    return n


def lease_gpu(wait_s: float = 1.0) -> str:
    """A GPU for this job of a local sweep (hydra/launcher=local_gpus): the first one no other worker holds (a lock
    file per GPU), made this process's only visible device (CUDA_VISIBLE_DEVICES) before CUDA starts. A joblib
    worker keeps its GPU for its life: once CUDA has started, a process cannot move to another device."""
    global _LEASE
    if _LEASE is not None:
        return _LEASE[0]
    import fcntl
    import tempfile
    import time
    from pathlib import Path

    gpus = visible_gpus()
    if not gpus:
        raise GanlabError("hydra/launcher=local_gpus: no GPU to place the job on (GANLAB_GPUS, CUDA_VISIBLE_DEVICES and "
                          "NVML show none).")
    locks = Path(os.environ.get("GANLAB_GPU_LOCKS", Path(tempfile.gettempdir()) / f"ganlab-gpus-{os.getuid()}"))
    locks.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            fh = open(locks / f"gpu{gpu}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            _LEASE = (gpu, fh)
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            return gpu
        time.sleep(wait_s)  # every GPU is taken: more workers than GPUs; wait for one to end

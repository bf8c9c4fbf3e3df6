"""Which torch device a command runs on. Shared by training, sampling and evaluation."""

from __future__ import annotations

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

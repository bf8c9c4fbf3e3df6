"""Mode coverage on 2D Gaussian mixtures, with the protocol of VEEGAN (Srivastava et al. 2017) and
PacGAN (Lin et al. 2018): draw 2,500 samples; a sample is high quality when it lies within 3 std
of its nearest mode; a mode is captured (papers' rule) when at least one high-quality sample is
nearest to it, or (strict rule) when at least 1% of all samples are high-quality samples of it;
the reverse KL is KL(mode histogram of the high-quality samples || uniform)."""

from __future__ import annotations

import math

import torch


def mixture_metrics(samples: torch.Tensor, modes: torch.Tensor, std: float, strict_fraction: float = 0.01) -> dict:
    samples, modes = samples.detach().double().cpu(), modes.double().cpu()
    dist = torch.cdist(samples, modes)  # N x K
    nearest_dist, nearest = dist.min(dim=1)
    hq = nearest_dist <= 3.0 * std
    counts = torch.bincount(nearest[hq], minlength=len(modes)).double()
    n = len(samples)
    k = len(modes)
    kl = 0.0
    if counts.sum() > 0:
        p = counts / counts.sum()
        nz = p > 0
        kl = float((p[nz] * (p[nz] * k).log()).sum())
    return {
        "n_samples": n,
        "n_modes": k,
        "modes_captured": int((counts >= 1).sum()),
        "modes_captured_strict": int((counts >= math.ceil(strict_fraction * n)).sum()),
        "high_quality": float(hq.double().mean()),
        "reverse_kl": kl,
    }

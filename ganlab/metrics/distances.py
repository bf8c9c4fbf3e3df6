"""Distances between a set of generated features and a set of real ones.

- Fréchet distance between Gaussians fitted to both (FID when the features are Inception's;
  Heusel et al. 2017), computed with a symmetric eigendecomposition in float64.
- Kernel inception distance: unbiased MMD^2 with the cubic polynomial kernel, averaged over random
  subsets (Bińkowski et al. 2018).
- Precision/recall (Kynkäänniemi et al. 2019, k=3) and density/coverage (Naeem et al. 2020, k=5)
  from k-nearest-neighbour balls.
"""

from __future__ import annotations

import torch


def gaussian_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double().flatten(1)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / max(len(x) - 1, 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), the closed form for two Gaussians."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    s1 = _sqrtm_psd(sigma1)
    cross = _sqrtm_psd(s1 @ sigma2 @ s1)
    return float((mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * cross.trace())


def fd(fake: torch.Tensor, real: torch.Tensor) -> dict:
    return {"fd": frechet_distance(*gaussian_stats(fake), *gaussian_stats(real))}


def kid(fake: torch.Tensor, real: torch.Tensor, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> dict:
    fake, real = fake.double().flatten(1), real.double().flatten(1)
    d = fake.shape[1]
    m = min(subset_size, len(fake), len(real))
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = fake[torch.randperm(len(fake), generator=g)[:m]]
        y = real[torch.randperm(len(real), generator=g)[:m]]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = 1 - torch.eye(m, dtype=torch.float64)
        mmd = (kxx * off).sum() / (m * (m - 1)) + (kyy * off).sum() / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    v = torch.stack(values)
    return {"kid": float(v.mean()), "kid_std": float(v.std()) if len(v) > 1 else 0.0}


def _kth_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    dist = torch.cdist(x, x)
    return dist.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def prdc(fake: torch.Tensor, real: torch.Tensor, k_pr: int = 3, k_dc: int = 5) -> dict:
    fake, real = fake.double().flatten(1), real.double().flatten(1)
    cross = torch.cdist(real, fake)  # R x F
    r_pr, f_pr = _kth_distance(real, k_pr), _kth_distance(fake, k_pr)
    precision = (cross <= r_pr[:, None]).any(0).double().mean()
    recall = (cross.T <= f_pr[:, None]).any(0).double().mean()
    r_dc = _kth_distance(real, k_dc)
    inside = cross <= r_dc[:, None]
    density = inside.double().sum(0).mean() / k_dc
    coverage = (cross.min(1).values <= r_dc).double().mean()
    return {"precision": float(precision), "recall": float(recall), "density": float(density), "coverage": float(coverage)}

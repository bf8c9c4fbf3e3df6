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


MOMENTS_MAX_D3 = 4096  # KID by moment sums up to d = 16 (d^3 entries per sample), else by kernel matrices


def _cubic_kernel(a: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
    """KID's polynomial kernel (a b^T / d + 1)^3, cubed by in-place products (pow on float64 is slow)."""
    k = torch.addmm(torch.ones((), dtype=a.dtype), a, b.T, alpha=1.0 / d)
    return k.square().mul_(k)


def _kernel_sums_by_moments(x: torch.Tensor, subsets: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each subset (rows of `subsets`: indices into x), sum_ij k(x_i, x_j) and the vector of sums of
    x^(tensor p) for p = 1..3, from which every cross sum follows: with u = x.y / d,
    (u + 1)^3 = u^3 + 3u^2 + 3u + 1 and sum_ij (x_i.y_j)^p = <sum_i x_i^(x)p, sum_j y_j^(x)p>. O(n d^3):
    for low-dimensional features (the 2D mixtures) far cheaper than the m x m kernel matrices."""
    n = len(x)
    powers = [x, (x[:, :, None] * x[:, None, :]).flatten(1), (x[:, :, None, None] * x[:, None, :, None]
                                                               * x[:, None, None, :]).flatten(1)]
    pick = torch.zeros(len(subsets), n, dtype=x.dtype)
    pick.scatter_(1, subsets, 1.0)
    return [pick @ p for p in powers]  # per subset: the sums of x, x(x)x, x(x)x(x)x


def _cross_sum(a: list[torch.Tensor], b: list[torch.Tensor], m: int, d: int) -> torch.Tensor:
    """sum_ij (x_i.y_j / d + 1)^3 per subset, from the moment sums of both sides."""
    u1, u2, u3 = ((pa * pb).sum(1) / d ** p for p, (pa, pb) in enumerate(zip(a, b), start=1))
    return u3 + 3 * u2 + 3 * u1 + m * m


def kid(fake: torch.Tensor, real: torch.Tensor, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> dict:
    """Unbiased MMD^2 of the cubic polynomial kernel over `subsets` random subsets of `subset_size` per side
    (the same draws whichever way it is computed: kernel matrices, or moment sums when d^3 is small)."""
    fake, real = fake.double().flatten(1), real.double().flatten(1)
    d = fake.shape[1]
    m = min(subset_size, len(fake), len(real))
    g = torch.Generator().manual_seed(seed)
    draws = [(torch.randperm(len(fake), generator=g)[:m], torch.randperm(len(real), generator=g)[:m])
             for _ in range(subsets)]
    if d ** 3 <= MOMENTS_MAX_D3:
        fi, ri = torch.stack([f for f, _ in draws]), torch.stack([r for _, r in draws])
        mf, mr = _kernel_sums_by_moments(fake, fi, d), _kernel_sums_by_moments(real, ri, d)
        diag_f = ((fake.square().sum(1) / d + 1) ** 3)[fi].sum(1)
        diag_r = ((real.square().sum(1) / d + 1) ** 3)[ri].sum(1)
        v = ((_cross_sum(mf, mf, m, d) - diag_f + _cross_sum(mr, mr, m, d) - diag_r) / (m * (m - 1))
             - 2 * _cross_sum(mf, mr, m, d) / (m * m))
    else:
        values = []
        for fi, ri in draws:
            x, y = fake[fi], real[ri]
            kxx, kyy, kxy = (_cubic_kernel(a, b, d) for a, b in ((x, x), (y, y), (x, y)))
            off_diagonal = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            values.append(off_diagonal - 2 * kxy.mean())
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

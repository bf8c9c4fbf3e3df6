"""Metrics of class probabilities p(y|x) from a classifier (ganlab's small CNN, or Inception).

- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over 10 splits.
  With ganlab's classifier it is the "classifier score" of the MNIST-GAN literature (max = number
  of classes); with torchvision's Inception it is NOT the TF-Inception IS of the papers.
- Class histogram of the argmax predictions: classes hit at least once, the KL of that histogram
  to the real data's label histogram (mode dropping and mode imbalance raise it), and to uniform
  (the number VEEGAN and PacGAN report for Stacked MNIST). Each KL comes with its standard error over
  draws (`class_kl_se`, `class_kl_uniform_se`): the spread of the KL of n fresh samples from the same G,
  estimated by resampling the histogram (a parametric bootstrap). With 1,000 classes and a KL near 0.1 it
  is about 0.003 at 26,000 samples, so two draws of one G can land either side of a threshold such as 0.1.
"""

from __future__ import annotations

import torch


def inception_score(probs: torch.Tensor, splits: int = 10) -> dict:
    probs = probs.double()
    splits = max(1, min(splits, len(probs) // 2))
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log())).sum(1).mean()
        # the mean KL to the split's marginal is a mutual information, >= 0 (IS >= 1); near-identical predictions
        # can round it to -1e-16, which would print an IS of 0.9999999999999999
        scores.append(kl.clamp_min(0).exp())
    s = torch.stack(scores)
    return {"is": float(s.mean()), "is_std": float(s.std()) if len(s) > 1 else 0.0}


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    nz = p > 0
    return float((p[nz] * (p[nz].log() - q[nz].clamp_min(1e-12).log())).sum())


def _kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p_b || q) for each row b of p (0 log 0 = 0)."""
    return torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-12).log()), p.new_zeros(())).sum(1)


def kl_standard_errors(counts: torch.Tensor, targets: list[torch.Tensor], draws: int = 200,
                       seed: int = 0) -> list[float]:
    """The standard error of the histogram's KL to each target distribution over draws of n = counts.sum()
    labels: n labels redrawn `draws` times from the observed histogram (seeded: the same counts give the same
    errors), the KL of each redraw, their standard deviation. Host-side, once per evaluation."""
    n, k = int(counts.sum()), len(counts)
    if n < 2:
        return [0.0 for _ in targets]
    g = torch.Generator().manual_seed(seed)
    labels = torch.multinomial((counts / n).float(), n * draws, replacement=True, generator=g).view(draws, n)
    offsets = torch.arange(draws).view(-1, 1) * k
    redrawn = torch.bincount((labels + offsets).flatten(), minlength=draws * k).view(draws, k).double() / n
    return [float(_kl_rows(redrawn, q.double().view(1, -1)).std()) for q in targets]


def class_histogram(probs: torch.Tensor, real_hist: torch.Tensor) -> dict:
    """`real_hist`: the real data's label counts (K)."""
    k = probs.shape[1]
    counts = torch.bincount(probs.argmax(1), minlength=k).double()
    p = counts / counts.sum()
    q, uniform = real_hist.double() / real_hist.sum(), torch.full_like(p, 1.0 / k)
    se, se_uniform = kl_standard_errors(counts, [q, uniform])
    return {"classes_captured": int((counts > 0).sum()), "n_classes": k,
            "class_kl": _kl(p, q), "class_kl_se": se,
            "class_kl_uniform": _kl(p, uniform), "class_kl_uniform_se": se_uniform}

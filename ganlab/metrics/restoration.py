"""Restoration metrics on the hole: how close a filled image is to the real one where pixels were missing.

Images in [-1, 1] are scored in [0, 1] (data range 1), per image, then averaged over images:
- `psnr_hole`: 10 log10(1 / MSE over the hole's pixels and channels) (capped at 100 dB for a perfect fill);
- `ssim_hole`: the SSIM map (torchmetrics' structural_similarity_index_measure: Gaussian window
  11 x 11, sigma 1.5, k1 0.01, k2 0.03, Wang et al. 2004) of the whole image, averaged over the hole's
  pixels: the windows centred in the hole, which see the fill and its seam with the known pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _hole_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per image: the mean of N x C x H x W values over the hole (mask N x 1 x H x W, 1 = hole)."""
    m = mask.expand_as(values)
    return (values * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def psnr_hole(filled: Tensor, real: Tensor, mask: Tensor) -> Tensor:
    """Per-image PSNR (dB) on the hole, images in [-1, 1]."""
    mse = _hole_mean(((filled.float() - real.float()) / 2) ** 2, mask.float())
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim_hole(filled: Tensor, real: Tensor, mask: Tensor) -> Tensor:
    """Per-image SSIM averaged over the hole's pixels, images in [-1, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, ssim_map = structural_similarity_index_measure(
        (filled.float().clamp(-1, 1) + 1) / 2, (real.float() + 1) / 2, data_range=1.0, reduction="none",
        return_full_image=True)
    return _hole_mean(ssim_map, mask.float())


def hole_scores(filled: Tensor, real: Tensor, mask: Tensor) -> dict[str, float]:
    return {"psnr_hole": float(psnr_hole(filled, real, mask).mean()), "ssim_hole": float(ssim_hole(filled, real, mask).mean())}

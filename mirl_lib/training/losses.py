"""The training loss: L1, optionally with a PSNR and an SSIM term (``restoration_loss``); SSIM is
computed exactly as ``core.protocol.ssim`` scores it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# SSIM constants of ``skimage.metrics.structural_similarity`` (data range 1, 7x7 uniform window,
# sample covariances), so the loss's SSIM is the one ``mirl_lib.core.protocol.ssim`` reports.
SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable SSIM of (B, C, H, W) images in [0, 1], per channel and window position.

    Local means, variances and the covariance over a ``SSIM_WINDOW`` x ``SSIM_WINDOW`` uniform
    window (valid positions only) with the sample-covariance correction, ``C1 = (K1)^2``,
    ``C2 = (K2)^2``: the formula of ``skimage.metrics.structural_similarity`` with its defaults.
    """
    w = SSIM_WINDOW
    n = w * w
    cov = n / (n - 1)
    mx, my = F.avg_pool2d(x, w, 1), F.avg_pool2d(y, w, 1)
    vx = cov * (F.avg_pool2d(x * x, w, 1) - mx * mx)
    vy = cov * (F.avg_pool2d(y * y, w, 1) - my * my)
    vxy = cov * (F.avg_pool2d(x * y, w, 1) - mx * my)
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    return ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def restoration_loss(restored: torch.Tensor, clean: torch.Tensor, ssim_weight: float = 0.0,
                     psnr_weight: float = 0.0) -> torch.Tensor:
    """``L1 + psnr_weight * (-PSNR) + ssim_weight * (1 - SSIM)``; both weights 0 is the published
    L1 loss. ``-PSNR``: the batch mean of each image's ``10 log10(MSE + 1e-8)``, minus its PSNR in
    dB (on the unclipped output, so the gradient never vanishes).

    The SSIM term is computed on the output clipped to [0, 1] (as it is scored), with gradients
    through the clip where the output lies inside it.
    """
    loss = F.l1_loss(restored, clean)
    if psnr_weight > 0:
        mse = (restored - clean).square().flatten(1).mean(dim=1)
        loss = loss + psnr_weight * 10.0 * torch.log10(mse + 1e-8).mean()
    if ssim_weight > 0:  # contiguous: the 3-channel pooling is slow in channels-last layout
        ssim = ssim_map(restored.clamp(0.0, 1.0).contiguous(), clean.contiguous())
        loss = loss + ssim_weight * (1.0 - ssim.mean())
    return loss

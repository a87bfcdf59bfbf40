"""Detail-preserving pooling (DPP; Saeedan, Weber, Goesele, Roth, CVPR 2018), a downsampler of CARAFE++ Table III.

DPP is a weighted average over each pooling window whose weights grow with how much a pixel
deviates from a linearly downscaled version of the window, so details (edges, spikes) are kept
instead of being averaged away. The weights follow the authors' code (visinf/dpp, ``DPP_sym_lite``
and its PyTorch port): for output pixel p with window Ω_p and input pixels q ∈ Ω_p,

    Ĩ_p     = mean_{q∈Ω_p} I_q                                (the linear downscaling)
    d_pq    = (I_q − Ĩ_p)² + ε                                (ε = 1e-3 keeps flat windows finite)
    w_pq    = (d_pq / mean_{q'∈Ω_p} d_pq')^{exp(λ_c)} + exp(α_c)   (per-channel learned λ, α; exp keeps them > 0)
    out_p   = Σ_q w_pq I_q / Σ_q w_pq

Windows are k×k (odd k, default 3) with stride s and padding k//2, so window p is centred at
input pixel s·p like every other downsampler of this project (strided conv, pooling, LIP,
CARAFE++) and the output is ⌈H/s⌉ × ⌈W/s⌉; pixels outside the map take no part. This is the
geometry of the official ImageNet DPP-ResNet, whose guide is a 3×3, stride-2, padding-1 average
pool (``models/cudads.lua``); the authors' CIFAR "lite" code uses 2×2 windows, which would put
every output half a pixel off the grid the other downsamplers and the detector's anchors use.
λ and α are stored in log space and initialised uniform in [0, 1) as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.checks import check_odd_kernel
from carafe_exp.resample.registry import register_downsampler

DIFFERENCE_EPS = 1e-3


@register_downsampler("dpp")
class DetailPreservingPool(nn.Module):
    """Detail-preserving pooling over centred k×k windows with per-channel learned α, λ (see module docstring)."""

    def __init__(self, channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_odd_kernel("dpp", "kernel_size", kernel_size)
        self.scale = scale
        self.kernel_size = kernel_size
        self.log_lambda = nn.Parameter(torch.rand(channels))
        self.log_alpha = nn.Parameter(torch.rand(channels))

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, k², H', W'): the k×k window of every output pixel (zeros outside the map)."""
        n, c, h, w = x.shape
        k, s = self.kernel_size, self.scale
        out_h, out_w = (h - 1) // s + 1, (w - 1) // s + 1
        columns = F.unfold(x, k, padding=k // 2, stride=s)
        return columns.view(n, c, k * k, out_h, out_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self._windows(x)
        # Which window taps fall inside the map: the mean and the weights ignore the rest.
        inside = self._windows(torch.ones_like(x[:1, :1]))
        count = inside.sum(dim=2, keepdim=True)
        mean = (values * inside).sum(dim=2, keepdim=True) / count
        deviation = (values - mean) ** 2 + DIFFERENCE_EPS
        mean_deviation = (deviation * inside).sum(dim=2, keepdim=True) / count
        exponent = self.log_lambda.exp().view(1, -1, 1, 1, 1)
        weights = ((deviation / mean_deviation).pow(exponent) + self.log_alpha.exp().view(1, -1, 1, 1, 1)) * inside
        return (weights * values).sum(dim=2) / weights.sum(dim=2)

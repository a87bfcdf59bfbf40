"""Baseline downsamplers: strided convolution, max pooling and average pooling.

All use an odd window with padding ``k // 2`` and stride ``s``, which yields exactly
``ceil(H / s)`` for every H (``floor((H - 1) / s) + 1``), the size contract of a downsampler.
"""

from __future__ import annotations

import torch
from torch import nn

from carafe_exp.resample.checks import check_odd_kernel
from carafe_exp.resample.registry import register_downsampler


@register_downsampler("conv")
class StridedConvDownsample(nn.Module):
    """Strided k×k convolution C→C, the original ResNet downsampling.

    At model sites, ``downsampler=conv`` keeps the architecture's own strided operator untouched
    (see ``ORIGINAL_DOWNSAMPLER``); this module is what a site without one gets.
    """

    def __init__(self, channels: int, scale: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        check_odd_kernel("conv", "kernel_size", kernel_size)
        self.conv = nn.Conv2d(channels, channels, kernel_size, stride=scale, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@register_downsampler("maxpool")
class MaxPoolDownsample(nn.Module):
    """k×k max pooling with stride s (ResNet's stem operator is the 3×3, s=2 case)."""

    def __init__(self, channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_odd_kernel("maxpool", "kernel_size", kernel_size)
        self.pool = nn.MaxPool2d(kernel_size, stride=scale, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


@register_downsampler("avgpool")
class AvgPoolDownsample(nn.Module):
    """k×k average pooling with stride s; padding is excluded from the average."""

    def __init__(self, channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_odd_kernel("avgpool", "kernel_size", kernel_size)
        self.pool = nn.AvgPool2d(kernel_size, stride=scale, padding=kernel_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)

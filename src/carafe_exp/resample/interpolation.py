"""Parameter-free upsamplers: nearest-neighbour and bilinear interpolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.registry import register_upsampler


@register_upsampler("nearest")
class NearestUpsample(nn.Module):
    """Nearest-neighbour ×s: FPN's original top-down operator (CARAFE Table 2 baseline)."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


@register_upsampler("bilinear")
class BilinearUpsample(nn.Module):
    """Bilinear ×s with ``align_corners=False`` (mmcv's and torchvision's convention)."""

    def __init__(self, channels: int, scale: int, align_corners: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=self.align_corners)

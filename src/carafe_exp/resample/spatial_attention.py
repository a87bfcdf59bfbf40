"""Spatial attention as an upsampler ('S.A.' of CARAFE Table 2, after Chen et al., SCA-CNN [3]).

The CARAFE paper describes spatial attention as predicting an attention map of the feature's
spatial size and rescaling the feature at each location (a CARAFE with k_up = 1). Used as an
upsampler in FPN it must also resize, so the design is: bilinear ×s, a 3×3 conv C→1 on the
upsampled map, sigmoid, and a per-location rescaling of all channels. This is the design whose
cost matches Table 2 at C=256, s=2: params 9·256 + 1 = 2,305 (paper 2.3k); FLOPs per input
pixel 8,192 (bilinear) + 4·2·2,305 (conv at the output resolution) + 4·256 (rescaling)
= 27,656 (paper 28k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.checks import check_odd_kernel
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.weight_init import xavier_uniform_init


@register_upsampler("spatial_attention")
class SpatialAttentionUpsample(nn.Module):
    """Bilinear ×s, then rescale every location by sigmoid(conv_k×k(C→1)) of the upsampled map."""

    def __init__(self, channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_odd_kernel("spatial_attention", "kernel_size", kernel_size)
        self.scale = scale
        self.attention = nn.Conv2d(channels, 1, kernel_size, padding=kernel_size // 2)
        xavier_uniform_init(self.attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return upsampled * torch.sigmoid(self.attention(upsampled))

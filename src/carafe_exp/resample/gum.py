"""Guided Upsampling Module ('GUM' of CARAFE Table 2; Mazzini, BMVC 2018, "Guided Upsampling Network").

GUM predicts, for every output pixel, a sub-pixel offset (the "guidance offset table") that
moves the position at which the low-resolution map is sampled, and samples bilinearly there.
In Mazzini's network the offsets come from a separate high-resolution guidance branch; as a
drop-in upsampler (FPN's top-down path has only the coarse map) the guidance branch here runs on
the bilinearly upsampled input, at the output resolution:

    guidance = bilinear×s(x) → 1×1 conv C→C, ReLU → 1×1 conv C→C, ReLU → 1×1 conv C→2 (offsets)
    out[y, x] = bilinear sample of x at base(y, x) + offset(y, x) / s

Offsets are in output pixels (GUN's offset table lives on the output grid); ``base`` is the
``align_corners=False`` source position, and the last conv starts at zero, so a fresh GUM is
exactly bilinear interpolation. This is the design whose cost matches Table 2 at C=256, s=2:
params 2·(256·256 + 256) + (2·256 + 2) = 132,098 (paper 132k); FLOPs per input pixel
4·2·(2·257·256 + 257·2) + 8,192 (bilinear) + 8,192 (sampling) = 1,073,168 (paper 1.1M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.checks import check_positive_int
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.sampling import coordinate_dtype, sample_bilinear, upsampling_base_coords
from carafe_exp.resample.weight_init import xavier_uniform_init, zero_init


@register_upsampler("gum")
class GuidedUpsample(nn.Module):
    """Bilinear sampling at learned sub-pixel offsets predicted per output pixel (see module docstring)."""

    def __init__(self, channels: int, scale: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = channels if hidden_channels is None else hidden_channels
        check_positive_int("gum", "hidden_channels", hidden)
        self.scale = scale
        self.guidance = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2, 1),
        )
        for layer in self.guidance:
            if isinstance(layer, nn.Conv2d):
                xavier_uniform_init(layer)
        # Zero offsets at start: GUM begins as bilinear upsampling and learns where to deviate.
        zero_init(self.guidance[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        upsampled = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        offsets = self.guidance(upsampled).to(coordinate_dtype(x.dtype))
        base = upsampling_base_coords(height, width, self.scale, dtype=offsets.dtype, device=x.device)
        coords = base.unsqueeze(0) + offsets / self.scale
        return sample_bilinear(x, coords)

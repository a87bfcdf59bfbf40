"""DySample (Liu et al., ICCV 2023, "Learning to Upsample by Learning to Sample").

A newer, lighter baseline that users compare CARAFE with: instead of predicting reassembly
kernels, a 1×1 conv predicts, for each output pixel and channel group, a 2-D offset from the
bilinear sampling position, and the input is sampled bilinearly there. Follows the official
code (tiny-smart/dysample) with its defaults: style "lp" (linear then pixel-shuffle), 4 groups,
static scope factor 0.25; ``dyscope=True`` gives the dynamic scope 0.5·sigmoid(conv(x)), and
style "pl" (pixel-shuffle then linear) predicts the offsets from PixelShuffle(s)(x).

Initialisation as the official code: offset conv N(0, 0.001), scope conv zero. With zero
offsets the module is exactly bilinear upsampling (align_corners=False, border padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.checks import check_choice, check_divides, check_positive_int
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.sampling import coordinate_dtype, sample_bilinear, upsampling_base_coords
from carafe_exp.resample.weight_init import normal_init

# The official static scope: offsets stay within a quarter input pixel, which keeps sampling
# points of neighbouring outputs from overlapping (DySample §3.3).
STATIC_SCOPE = 0.25
DYNAMIC_SCOPE = 0.5


@register_upsampler("dysample")
class DySampleUpsample(nn.Module):
    """Point-sampling upsampler with content-predicted offsets (see module docstring)."""

    def __init__(self, channels: int, scale: int, groups: int = 4, style: str = "lp", dyscope: bool = False) -> None:
        super().__init__()
        check_choice("dysample", "style", style, ("lp", "pl"))
        check_positive_int("dysample", "groups", groups)
        check_divides("dysample", "groups", groups, channels)
        if style == "pl":
            check_divides("dysample (style 'pl')", "scale**2", scale * scale, channels)
            offset_in, offset_out = channels // (scale * scale), 2 * groups
        else:
            offset_in, offset_out = channels, 2 * groups * scale * scale
        self.scale = scale
        self.groups = groups
        self.style = style
        self.offset = nn.Conv2d(offset_in, offset_out, 1)
        normal_init(self.offset, std=0.001)
        self.scope: nn.Conv2d | None = None
        if dyscope:
            self.scope = nn.Conv2d(offset_in, offset_out, 1, bias=False)
            nn.init.zeros_(self.scope.weight)

    def _scaled_offsets(self, source: torch.Tensor) -> torch.Tensor:
        if self.scope is None:
            return self.offset(source) * STATIC_SCOPE
        return self.offset(source) * torch.sigmoid(self.scope(source)) * DYNAMIC_SCOPE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if self.style == "lp":
            # Channels are ordered (xy, group, sub-pixel): PixelShuffle moves the sub-pixel index to space.
            offsets = F.pixel_shuffle(self._scaled_offsets(x), self.scale)
        else:
            offsets = self._scaled_offsets(F.pixel_shuffle(x, self.scale))
        out_h, out_w = height * self.scale, width * self.scale
        offsets = offsets.view(batch, 2, self.groups, out_h, out_w).transpose(1, 2).to(coordinate_dtype(x.dtype))
        base = upsampling_base_coords(height, width, self.scale, dtype=offsets.dtype, device=x.device)
        coords = (base.view(1, 1, 2, out_h, out_w) + offsets).reshape(batch * self.groups, 2, out_h, out_w)
        grouped = x.reshape(batch * self.groups, channels // self.groups, height, width)
        return sample_bilinear(grouped, coords).view(batch, channels, out_h, out_w)


@register_upsampler("dysample_plus")
class DySamplePlusUpsample(DySampleUpsample):
    """DySample+ (the paper's name): DySample with the dynamic scope on by default.

    The official variant of tiny-smart/detection-with-upsamplers ``dysample-lpg4ds`` (style lp,
    4 groups, dynamic scope); a separate option so that runs and table rows carry its name.
    """

    def __init__(self, channels: int, scale: int, groups: int = 4, style: str = "lp", dyscope: bool = True) -> None:
        super().__init__(channels, scale, groups=groups, style=style, dyscope=dyscope)

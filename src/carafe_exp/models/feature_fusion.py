"""UperNet's multi-level feature fusion (FUSE) of P2–P5, with CARAFE's FUSE site (CARAFE §4.2, column U).

Original UperNet (CSAIL ``UPerNet.forward``): P3, P4 and P5 are each resized bilinearly straight
to the P2 size and concatenated after P2, giving [P2, P3, P4, P5].

CARAFE §4.2 rewrites this as a "sequential upsampling-concatenation" and puts the upsampler
at each step: F4 = [P4, up(P5)], F3 = [P3, up(F4)], F2 = [P2, up(F3)]. The three upsamplers
work on C, 2C and 3C channels, and F2's channel order is the original [P2, P3, P4, P5]. A ×2
step that overshoots an odd target size is cropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from carafe_exp.models.upernet_blocks import crop_to, resize_bilinear
from carafe_exp.resample import build_upsampler


class FeatureFusion(nn.Module):
    """Fuse ``num_levels`` pyramid levels of ``channels`` each at the finest level's size."""

    def __init__(self, channels: int, num_levels: int = 4,
                 upsampler: str | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"FeatureFusion needs at least two levels, got {num_levels}")
        self.num_levels = num_levels
        # upsamplers[i] takes the running concatenation of levels i+1.. (its width: (L-1-i)·C) to level i.
        self.upsamplers = None if upsampler is None else nn.ModuleList(
            build_upsampler(upsampler, (num_levels - 1 - i) * channels, 2, site="model.sites.fuse (UperNet FUSE)")
            for i in range(num_levels - 1))

    @property
    def out_channels_factor(self) -> int:
        """The fused map has ``num_levels`` × the level width."""
        return self.num_levels

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(levels) != self.num_levels:
            raise ValueError(f"FeatureFusion expects {self.num_levels} levels, got {len(levels)}")
        if self.upsamplers is None:
            size = levels[0].shape[-2:]
            return torch.cat([levels[0], *(resize_bilinear(level, size) for level in levels[1:])], dim=1)
        fused = levels[-1]
        for i in range(self.num_levels - 2, -1, -1):
            up = crop_to(self.upsamplers[i](fused), levels[i].shape[-2:])
            fused = torch.cat([levels[i], up], dim=1)
        return fused


__all__ = ["FeatureFusion"]

"""UperNet's Pyramid Pooling Module on C5, with CARAFE's PPM site (CARAFE §4.2, Table 6 column P).

CSAIL's UperNet (``models.py``, ``UPerNet.forward``) pools C5 to s×s for s ∈ {1, 2, 3, 6},
resizes each pooled map bilinearly back to the C5 size, and only then applies its 1×1 conv
(C5 channels → ``channels``) + BN + ReLU; the four branches are concatenated with C5 and a 3×3
conv + BN + ReLU gives P5. mmsegmentation applies the 1×1 conv before resizing; that order is
``conv_first=True`` here.

With an upsampler (the site on), each branch is resized bilinearly to *half* the C5 size
(⌈h/2⌉ × ⌈w/2⌉) and the upsampler does the last ×2, one module per scale; an odd C5 size is
reached by cropping the extra row/column. In CSAIL's order the upsampler sees the pooled C5
map (2048 channels for ResNet-50), in mmseg's order the ``channels``-wide one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from carafe_exp.models.upernet_blocks import ConvBNReLU, crop_to, half_size, resize_bilinear
from carafe_exp.resample import build_upsampler

PAPER_POOL_SCALES = (1, 2, 3, 6)


class PyramidPooling(nn.Module):
    """PPM: C5 → P5 (``channels`` wide); ``upsampler`` None keeps the direct bilinear resize."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = PAPER_POOL_SCALES,
                 upsampler: str | Mapping[str, Any] | None = None, conv_first: bool = False) -> None:
        super().__init__()
        if not pool_scales or any(int(s) < 1 for s in pool_scales):
            raise ValueError(f"PyramidPooling: pool_scales must be positive ints, got {list(pool_scales)}")
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.conv_first = bool(conv_first)
        self.pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in self.pool_scales)
        self.convs = nn.ModuleList(ConvBNReLU(in_channels, channels, 1) for _ in self.pool_scales)
        upsampled_channels = channels if self.conv_first else in_channels
        self.upsamplers = None if upsampler is None else nn.ModuleList(
            build_upsampler(upsampler, upsampled_channels, 2, site="model.sites.ppm (UperNet PPM)")
            for _ in self.pool_scales)
        self.bottleneck = ConvBNReLU(in_channels + len(self.pool_scales) * channels, channels, 3)

    def _resize(self, x: torch.Tensor, index: int, size: Sequence[int]) -> torch.Tensor:
        if self.upsamplers is None:
            return resize_bilinear(x, size)
        return crop_to(self.upsamplers[index](resize_bilinear(x, half_size(size))), size)

    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        size = c5.shape[-2:]
        branches = [c5]
        for index, (pool, conv) in enumerate(zip(self.pooling, self.convs)):
            pooled = pool(c5)
            if self.conv_first:
                branches.append(self._resize(conv(pooled), index, size))
            else:
                branches.append(conv(self._resize(pooled, index, size)))
        return self.bottleneck(torch.cat(branches, dim=1))


__all__ = ["PAPER_POOL_SCALES", "PyramidPooling"]

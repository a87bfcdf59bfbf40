"""Multi-scale RoIAlign with torchvision's level mapping, a pixel model (``aligned``) and a sampling ratio.

mmdetection v1 (the CARAFE papers) samples RoIAlign without the half-pixel offset
(``aligned=False``) at 2×2 points per bin (``sample_num=2``), which is also what torchvision's
``MultiScaleRoIAlign`` does. mmdetection v2's model zoo (the released CARAFE checkpoints) uses
``aligned=True`` and ``sampling_ratio=0`` (adaptive: ⌈RoI size / 7⌉ points per bin side); this
pooler gives both options while keeping torchvision's FPN level assignment (k0=4, s0=224, which
equals mmdetection's ``finest_scale=56``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` that samples with ``roi_align(..., aligned=True)`` (half-pixel centres)."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], output_size=self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio, aligned=True)
            result[index] = pooled.to(result.dtype)
        return result


def use_aligned_roi_align(pooler: MultiScaleRoIAlign) -> MultiScaleRoIAlign:
    """Make a torchvision ``MultiScaleRoIAlign`` sample with ``aligned=True`` (in place)."""
    pooler.__class__ = AlignedMultiScaleRoIAlign
    return pooler


def configure_roi_align(pooler: MultiScaleRoIAlign, aligned: bool, sampling_ratio: int) -> MultiScaleRoIAlign:
    """Set ``pooler``'s pixel model and sampling ratio (0: adaptive), in place."""
    pooler.__class__ = AlignedMultiScaleRoIAlign if aligned else MultiScaleRoIAlign
    pooler.sampling_ratio = int(sampling_ratio)
    return pooler


__all__ = ["AlignedMultiScaleRoIAlign", "configure_roi_align", "use_aligned_roi_align"]

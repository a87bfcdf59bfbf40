"""Box decoding with the log-size deltas clamped on both sides, as mmdetection does.

torchvision's ``BoxCoder.decode_single`` clamps ``dw``/``dh`` only from above (at log(1000/16));
mmdetection v1 (``delta2bbox``: ``dw.clamp(min=-max_ratio, max=max_ratio)``) and v2/v3
(``DeltaXYWHBBoxCoder``, the same) clamp both ways, so a very negative delta gives a box at least
16/1000 of its anchor or proposal. Both versions agree, so this is not a setting: every R-CNN of
carafe-exp decodes the mmdetection way. It only matters for deltas below −4.135.
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder


class SymmetricClampBoxCoder(BoxCoder):
    """``BoxCoder`` whose decoding clamps ``dw``, ``dh`` to ±``bbox_xform_clip`` (mmdetection)."""

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        clip = self.bbox_xform_clip
        _, _, ww, wh = self.weights
        codes = rel_codes.clone()
        # Clamping the scaled delta at ±clip·weight is clamping dw = code / weight at ±clip; the
        # upper clamp of torchvision's own decode then changes nothing.
        codes[:, 2::4] = codes[:, 2::4].clamp(min=-clip * ww)
        codes[:, 3::4] = codes[:, 3::4].clamp(min=-clip * wh)
        return super().decode_single(codes, boxes)


def use_symmetric_clamp(coder: BoxCoder) -> BoxCoder:
    """Make ``coder`` decode with mmdetection's two-sided clamp (in place; same weights)."""
    coder.__class__ = SymmetricClampBoxCoder
    return coder


__all__ = ["SymmetricClampBoxCoder", "use_symmetric_clamp"]

"""RPN anchors with or without rounded base anchors (``model.anchor_rounding``).

torchvision's ``AnchorGenerator`` rounds its base anchors to whole pixels (``anchor_utils.py``:
``base_anchors.round()``), as mmdetection v1's generator did (``anchor_generator.py``: ``.round()``),
the code the CARAFE papers trained with. mmdetection v2/v3, which trained the released CARAFE
checkpoints, keeps them exact (``AnchorGenerator.gen_single_level_base_anchors``, no rounding):
the two differ by up to half a pixel (e.g. 22.63 vs 23 px for the 32-px anchor of ratio 2).
"""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator


class UnroundedAnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` whose base anchors keep their exact size (mmdetection v2/v3)."""

    def generate_anchors(self, scales: list[int], aspect_ratios: list[float], dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> torch.Tensor:
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales_t[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales_t[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


def set_anchor_rounding(generator: AnchorGenerator, rounded: bool) -> AnchorGenerator:
    """Make ``generator`` round its base anchors (torchvision, mmdetection v1) or not (v2/v3), in place."""
    generator.__class__ = AnchorGenerator if rounded else UnroundedAnchorGenerator
    generator.cell_anchors = [generator.generate_anchors(size, ratios)
                              for size, ratios in zip(generator.sizes, generator.aspect_ratios)]
    return generator


def anchors_rounded(generator: AnchorGenerator) -> bool:
    """Whether ``generator`` rounds its base anchors."""
    return not isinstance(generator, UnroundedAnchorGenerator)


__all__ = ["UnroundedAnchorGenerator", "anchors_rounded", "set_anchor_rounding"]

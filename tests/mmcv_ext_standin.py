"""A test-only stand-in for mmcv's compiled extension ``mmcv._ext``, so mmcv's and mmdet's Python runs.

``mmcv-lite`` ships mmcv's Python without the compiled kernels; ``import mmcv.ops`` then fails on
``load_ext('_ext', [...])``. Registered as ``sys.modules['mmcv._ext']`` before anything imports
``mmcv.ops``, this module answers every name ``load_ext`` asks for (so its ``hasattr`` checks pass)
with a function that raises, and implements the kernels the equivalence tests run:

- ``carafe_forward`` / ``carafe_naive_forward``: carafe-exp's own reassembly op (mmcv has no CPU
  CARAFE kernel), written in place into mmcv's output buffer as mmcv's kernel does;
- ``roi_align_forward`` (average mode): torchvision's ``roi_align`` with the same ``aligned`` flag
  and sampling ratio (mmcv's and torchvision's kernels are the same Detectron2 algorithm);
- ``nms``: torchvision's ``nms`` (``offset=1``, mmdetection v1's "+1" boxes, by widening the boxes).

Nothing here computes the reference's own logic: every line of mmdet/mmcv Python still runs.
"""

from __future__ import annotations

import sys
import types
from typing import Any, NoReturn

import torch
import torchvision

from carafe_exp.ops import carafe

NAME = "mmcv._ext"


def carafe_forward(features: torch.Tensor, masks: torch.Tensor, rfeatures: torch.Tensor, routput: torch.Tensor,
                   rmasks: torch.Tensor, output: torch.Tensor, kernel_size: int, group_size: int,
                   scale_factor: int) -> None:
    """mmcv ``CARAFEFunction.forward``'s kernel: ``output`` ← reassembly of ``features`` by ``masks``."""
    output.copy_(carafe(features, masks, kernel_size, scale_factor, group_size))


def carafe_naive_forward(features: torch.Tensor, masks: torch.Tensor, output: torch.Tensor, kernel_size: int,
                         group_size: int, scale_factor: int) -> None:
    """mmcv ``CARAFENaiveFunction.forward``'s kernel (same result as :func:`carafe_forward`)."""
    output.copy_(carafe(features, masks, kernel_size, scale_factor, group_size))


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor, argmax_y: torch.Tensor,
                      argmax_x: torch.Tensor, aligned_height: int, aligned_width: int, spatial_scale: float,
                      sampling_ratio: int, pool_mode: int, aligned: bool) -> None:
    """mmcv ``RoIAlignFunction.forward``'s kernel in average mode (``pool_mode=1``)."""
    if pool_mode != 1:
        raise NotImplementedError("mmcv._ext stand-in: roi_align_forward implements pool_mode='avg' only")
    pooled = torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                                       sampling_ratio, aligned)
    output.copy_(pooled)


def nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int) -> torch.Tensor:
    """mmcv ``nms``: indices kept, by decreasing score (``offset`` 1: box sizes are x2 − x1 + 1)."""
    if offset not in (0, 1):
        raise ValueError(f"mmcv._ext stand-in: nms offset must be 0 or 1, got {offset}")
    boxes = bboxes if offset == 0 else bboxes + bboxes.new_tensor([0, 0, 1, 1])
    return torchvision.ops.nms(boxes, scores, float(iou_threshold))


_IMPLEMENTED = {f.__name__: f for f in (carafe_forward, carafe_naive_forward, roi_align_forward, nms)}


def _missing(name: str) -> Any:
    def kernel(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise NotImplementedError(f"mmcv._ext stand-in: kernel {name} is not provided (tests/mmcv_ext_standin.py)")
    kernel.__name__ = name
    return kernel


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)


def install() -> types.ModuleType:
    """Register the stand-in as ``mmcv._ext`` (idempotent); call before importing ``mmcv.ops``."""
    existing = sys.modules.get(NAME)
    if isinstance(existing, _StandIn):
        return existing
    module = _StandIn(NAME, __doc__)
    for name, function in _IMPLEMENTED.items():
        setattr(module, name, function)
    sys.modules[NAME] = module
    return module

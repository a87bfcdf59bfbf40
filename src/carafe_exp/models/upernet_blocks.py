"""Building blocks shared by UperNet's modules: conv+BN+ReLU, CSAIL's initialisation, size matching.

CSAIL's ``ModelBuilder.weights_init`` (semantic-segmentation-pytorch, models/models.py) gives
every decoder convolution a Kaiming-normal weight (fan-in, ReLU gain) and every BatchNorm
γ = 1, β = 1e-4; convolution biases keep PyTorch's default. By default the resamplers placed at
UperNet's sites keep their own initialisation (mmcv's, for CARAFE): the papers do not say, and they
are not UperNet layers. ``model.resampler_init=csail`` re-initialises them too, as CSAIL's
``build_decoder`` would (it applies ``weights_init`` to every module of the decoder it builds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# CSAIL's BatchNorm bias initialisation.
BN_BIAS_INIT = 1e-4


class ConvBNReLU(nn.Sequential):
    """k×k convolution without bias, BatchNorm, ReLU (CSAIL's ``conv3x3_bn_relu`` and 1×1 variants)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def csail_init(module: nn.Module, skip: Iterable[nn.Module] = ()) -> None:
    """Kaiming-normal convolutions and BN γ=1, β=1e-4 in ``module``, except inside ``skip``."""
    skipped = {id(m) for root in skip for m in root.modules()}
    for child in module.modules():
        if id(child) in skipped:
            continue
        # CSAIL matches class names containing "Conv": every convolution, transposed ones included.
        if isinstance(child, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(child.weight, nonlinearity="relu")
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and child.affine:
            nn.init.ones_(child.weight)
            nn.init.constant_(child.bias, BN_BIAS_INIT)


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize to ``size`` with align_corners=False (CSAIL's ``upsample(..., mode='bilinear')``)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop ``x`` to ``size`` (mmdetection's ``slice_as``).

    A ×2 upsampler gives 2·⌈h/2⌉ rows where the target has h, one more when h is odd; the extra
    bottom row / right column is dropped. A map smaller than ``size`` is a bug upstream.
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"cannot crop a {tuple(x.shape[-2:])} map to {(h, w)}: the upsampler gave fewer pixels "
                         f"than the target")
    return x[..., :h, :w]


def half_size(size: Sequence[int]) -> tuple[int, int]:
    """⌈h/2⌉ × ⌈w/2⌉: where a ×2 upsampler must start so that cropping reaches ``size``."""
    return (int(size[0]) + 1) // 2, (int(size[1]) + 1) // 2


__all__ = ["BN_BIAS_INIT", "ConvBNReLU", "crop_to", "csail_init", "half_size", "resize_bilinear"]

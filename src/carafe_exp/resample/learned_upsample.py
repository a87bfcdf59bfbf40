"""Learned fixed-kernel upsamplers of CARAFE Table 2: N.C., B.C., Deconv and Pixel Shuffle.

All convolutions map C→C (Pixel Shuffle: C→C·s²) and are initialised as in mmdetection's
``FPN_CARAFE`` (Xavier-uniform, zero bias). At C=256, s=2 their cost matches Table 2:
N.C./B.C. 4.7M FLOPs per input pixel and 590k params; Deconv 1.2M / 590k; P.S. 4.7M / 2.4M.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.checks import check_odd_kernel, check_positive_int
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.weight_init import xavier_uniform_init


class _InterpolateThenConv(nn.Module):
    """Interpolate ×s, then a k×k conv C→C at the output resolution (the 'extra 3×3 conv' of Table 2)."""

    mode: str = "nearest"

    def __init__(self, channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_odd_kernel(type(self).__name__, "kernel_size", kernel_size)
        self.scale = scale
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        xavier_uniform_init(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            upsampled = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        else:
            upsampled = F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=False)
        return self.conv(upsampled)


@register_upsampler("nearest_conv")
class NearestConvUpsample(_InterpolateThenConv):
    """'N.C.' of CARAFE Table 2: nearest ×s then a 3×3 conv C→C."""

    mode = "nearest"


@register_upsampler("bilinear_conv")
class BilinearConvUpsample(_InterpolateThenConv):
    """'B.C.' of CARAFE Table 2: bilinear ×s (align_corners=False) then a 3×3 conv C→C."""

    mode = "bilinear"


def transposed_conv_padding(kernel_size: int, scale: int) -> tuple[int, int]:
    """``(padding, output_padding)`` that make ConvTranspose2d(k, stride=s) map H to exactly s·H.

    The output size is (H-1)·s - 2p + k + op, so s·H needs k - 2p + op = s with 0 <= op < s.
    k=3, s=2 gives (1, 1), mmdetection's FPN_CARAFE deconv; k=2, s=2 gives (0, 0), Mask R-CNN's.
    Only an even k with s=1 has no solution (k − 2p would have to be 1).
    """
    padding = max(0, math.ceil((kernel_size - scale) / 2))
    output_padding = scale - kernel_size + 2 * padding
    if output_padding >= scale:
        raise ValueError(f"deconv: kernel_size={kernel_size} cannot give exactly {scale}x the input size "
                         f"with stride {scale}; use an odd kernel_size for scale 1")
    return padding, output_padding


@register_upsampler("deconv")
class DeconvUpsample(nn.Module):
    """'Deconv' of CARAFE Table 2: ConvTranspose2d C→C, k×k (default 3), stride s.

    Padding and output padding are chosen so the output is exactly s·H × s·W for any k and s
    (:func:`transposed_conv_padding`). With k < s (e.g. k=3, s=4) some output phases are reached by
    no kernel tap and carry only the bias: that is what a transposed conv of that shape computes.
    """

    def __init__(self, channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_positive_int("deconv", "kernel_size", kernel_size)
        padding, output_padding = transposed_conv_padding(kernel_size, scale)
        self.deconv = nn.ConvTranspose2d(channels, channels, kernel_size, stride=scale, padding=padding,
                                         output_padding=output_padding)
        xavier_uniform_init(self.deconv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(x)


@register_upsampler("pixel_shuffle")
class PixelShuffleUpsample(nn.Module):
    """'P.S.' of CARAFE Table 2 (Shi et al. 2016; mmcv's ``PixelShufflePack``): k×k conv C→C·s², PixelShuffle."""

    def __init__(self, channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_odd_kernel("pixel_shuffle", "kernel_size", kernel_size)
        self.conv = nn.Conv2d(channels, channels * scale * scale, kernel_size, padding=kernel_size // 2)
        self.shuffle = nn.PixelShuffle(scale)
        xavier_uniform_init(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))

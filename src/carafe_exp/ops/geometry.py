"""Shapes and layouts of the reassembly operator, shared by every backend and the fake kernel.

Upsampling maps (H, W) to (s·H, s·W); CARAFE++ downsampling maps (H, W) to (⌈H/s⌉, ⌈W/s⌉).
The kernels tensor has ``groups·k²`` channels at output resolution.
"""

from __future__ import annotations

import torch


def output_size(height: int, width: int, scale: int, down: bool) -> tuple[int, int]:
    """Spatial size of the output for an input of ``height`` × ``width``."""
    if down:
        # ⌈H/s⌉ written as a strided conv's output size (k odd, padding k//2): the kernel predictor's
        # encoder produces exactly this expression, so with symbolic sizes (torch.export with dynamic
        # H, W) the shape check is an identity instead of a guard sympy cannot prove.
        return (height - 1) // scale + 1, (width - 1) // scale + 1
    return height * scale, width * scale


def kernels_shape(
    features_shape: torch.Size | tuple[int, ...], kernel_size: int, scale: int, groups: int, down: bool
) -> tuple[int, int, int, int]:
    """The shape the kernels tensor must have for features of ``features_shape``."""
    batch, _, height, width = features_shape
    out_h, out_w = output_size(height, width, scale, down)
    return batch, groups * kernel_size * kernel_size, out_h, out_w


def is_channels_last(tensor: torch.Tensor) -> bool:
    """Whether results derived from ``tensor`` should be allocated channels-last.

    The compiled kernels and the fake (meta) kernel both use this rule, so torch.compile
    sees the strides the real kernel produces. A tensor that is both (e.g. C = 1 or
    H = W = 1) counts as contiguous.
    """
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def memory_format_like(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format results derived from ``tensor`` are allocated in."""
    return torch.channels_last if is_channels_last(tensor) else torch.contiguous_format

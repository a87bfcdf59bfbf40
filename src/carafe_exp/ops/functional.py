"""Public functional API of the reassembly operator: ``carafe`` (upsampling) and ``carafe_down``.

Both check their arguments, pick a backend (see carafe_exp.ops.backend) and run either the
compiled op registered in carafe_exp.ops.library or the pure-PyTorch reference.

Autocast: the op has no preferred low-precision dtype. It runs in the dtype its inputs
already have; when autocast is active and features and kernels differ (e.g. bfloat16
features from a conv and float32 kernels from a softmax) both are cast to their promoted
dtype (torch.promote_types), so no precision is lost. Outside autocast differing dtypes
are an error.

ONNX: while torch.onnx.export runs, the reference decomposition is used (plain pad, slice,
multiply-add), so exported graphs need no custom operator.
"""

from __future__ import annotations

import torch

from carafe_exp.ops import library
from carafe_exp.ops.backend import use_compiled
from carafe_exp.ops.reference import reassemble_reference
from carafe_exp.ops.validation import check_arguments


def _autocast_promote(features: torch.Tensor, kernels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if features.dtype == kernels.dtype or not torch.is_autocast_enabled(features.device.type):
        return features, kernels
    dtype = torch.promote_types(features.dtype, kernels.dtype)
    return features.to(dtype), kernels.to(dtype)


def _reassemble(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int,
    down: bool,
    backend: str | None,
) -> torch.Tensor:
    if isinstance(features, torch.Tensor) and isinstance(kernels, torch.Tensor):
        features, kernels = _autocast_promote(features, kernels)
    check_arguments(features, kernels, kernel_size, scale, groups, down)
    # numpy integers pass validation but not the op schema; SymInts (dynamic shapes) stay as they are.
    kernel_size, scale, groups = (v if isinstance(v, torch.SymInt) else int(v) for v in (kernel_size, scale, groups))
    if torch.onnx.is_in_onnx_export() or not use_compiled(backend):
        return reassemble_reference(features, kernels, kernel_size, scale, groups, down)
    return library.reassemble(features, kernels, kernel_size, scale, groups, down)


def carafe(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """CARAFE content-aware upsampling by an integer ``scale``.

    Args:
        features: (N, C, H, W) float32/float64/float16/bfloat16, any strides.
        kernels: (N, groups·k², s·H, s·W) reassembly kernels, already normalised (e.g.
            softmax over the k² taps); same device and dtype as ``features``.
        kernel_size: k, odd ≥ 1.
        scale: s, integer ≥ 1.
        groups: channels are split into ``groups`` contiguous blocks, block g using kernel
            channels [g·k², (g+1)·k²).
        backend: None/"auto", "compiled" or "reference"; default from $CARAFE_EXP_BACKEND.

    Returns:
        (N, C, s·H, s·W) with out[n,c,y,x] = Σ_{dy,dx∈[−r,r]} K[n, g·k²+(dy+r)·k+(dx+r), y, x] ·
        X[n, c, ⌊y/s⌋+dy, ⌊x/s⌋+dx], r = k // 2, zero outside the map (mmcv's CARAFE).
    """
    return _reassemble(features, kernels, kernel_size, scale, groups, False, backend)


def carafe_down(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """CARAFE++ content-aware downsampling by an integer ``scale``.

    Same arguments as :func:`carafe`, with ``kernels`` of shape (N, groups·k², ⌈H/s⌉, ⌈W/s⌉).

    Returns:
        (N, C, ⌈H/s⌉, ⌈W/s⌉) with out[n,c,y,x] = Σ_{dy,dx} K[n, g·k²+(dy+r)·k+(dx+r), y, x] ·
        X[n, c, s·y+dy, s·x+dx], zero outside the map.
    """
    return _reassemble(features, kernels, kernel_size, scale, groups, True, backend)

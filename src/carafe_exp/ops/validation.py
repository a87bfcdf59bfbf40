"""Argument checks of the reassembly operator, with messages that name the argument and shapes.

Every backend relies on these checks: the compiled kernels index memory without bounds
checks, so a wrong shape must never reach them.
"""

from __future__ import annotations

import numbers

import torch

from carafe_exp.ops.geometry import kernels_shape

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_integer(name: str, value: object, minimum: int, op: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")


def _check_tensor(name: str, value: object, op: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(value.shape)}")
    if value.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise TypeError(f"{op}: {name} must have dtype {names}; got {value.dtype}")
    return value


def check_arguments(
    features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int, groups: int, down: bool
) -> None:
    """Raise TypeError/ValueError describing the first problem with the arguments."""
    op = "carafe_down" if down else "carafe"
    _check_tensor("features", features, op)
    _check_tensor("kernels", kernels, op)
    _check_integer("kernel_size", kernel_size, 1, op)
    if kernel_size % 2 == 0:
        raise ValueError(f"{op}: kernel_size must be odd (the kernel is centred on the source pixel), got {kernel_size}")
    _check_integer("scale", scale, 1, op)
    _check_integer("groups", groups, 1, op)
    batch, channels, height, width = features.shape
    if channels < 1 or height < 1 or width < 1:
        raise ValueError(f"{op}: features must have C, H, W >= 1, got shape {tuple(features.shape)}")
    if channels % groups != 0:
        raise ValueError(
            f"{op}: groups={groups} must divide the channels of features, got shape {tuple(features.shape)} "
            f"(C={channels})"
        )
    if features.device != kernels.device:
        raise ValueError(f"{op}: features are on {features.device} but kernels are on {kernels.device}")
    if features.dtype != kernels.dtype:
        raise TypeError(
            f"{op}: features ({features.dtype}) and kernels ({kernels.dtype}) must have the same dtype "
            "(under autocast they are promoted automatically)"
        )
    expected = kernels_shape(features.shape, kernel_size, scale, groups, down)
    if tuple(kernels.shape) != tuple(expected):
        layout = "(N, groups·k², ⌈H/s⌉, ⌈W/s⌉)" if down else "(N, groups·k², s·H, s·W)"
        raise ValueError(
            f"{op}: kernels must have shape {layout} = {tuple(expected)} for features of shape "
            f"{tuple(features.shape)} with kernel_size={kernel_size}, scale={scale}, groups={groups}; "
            f"got {tuple(kernels.shape)}"
        )

"""torch.library registration of the compiled reassembly operator.

Two custom ops, ``carafe_exp::reassemble`` and ``carafe_exp::reassemble_backward``, with CPU
and CUDA kernels from the compiled extension, fake (meta) kernels for torch.compile and
torch.export, autograd through register_autograd, and FlopCounterMode formulas
(2·C·k² FLOPs per output pixel forward, twice that backward). The extension itself is built
lazily, the first time a kernel actually runs.

Double backward through the compiled op is not supported (the backward op has no autograd
formula); use backend="reference" for higher-order gradients.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from carafe_exp.ops.geometry import is_channels_last, memory_format_like, output_size


@torch.library.custom_op("carafe_exp::reassemble", mutates_args=(), device_types=("cpu", "cuda"))
def reassemble(
    features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int, groups: int, down: bool
) -> torch.Tensor:
    """Compiled CARAFE (``down=False``) / CARAFE++ downsampling forward; arguments pre-validated."""
    from carafe_exp.ops import extension  # lazily: the build happens on first use

    return extension.load().forward(features, kernels, kernel_size, scale, groups, down, is_channels_last(features))


@reassemble.register_fake
def _reassemble_fake(
    features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int, groups: int, down: bool
) -> torch.Tensor:
    batch, channels, height, width = features.shape
    out_h, out_w = output_size(height, width, scale, down)
    return torch.empty(
        (batch, channels, out_h, out_w),
        dtype=features.dtype,
        device=features.device,
        memory_format=memory_format_like(features),
    )


@torch.library.custom_op("carafe_exp::reassemble_backward", mutates_args=(), device_types=("cpu", "cuda"))
def reassemble_backward(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int,
    down: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (features, kernels) of ``reassemble``; deterministic gathers, no atomics."""
    from carafe_exp.ops import extension

    grad_features, grad_kernels = extension.load().backward(
        grad_output, features, kernels, kernel_size, scale, groups, down,
        is_channels_last(features), is_channels_last(kernels),
    )
    return grad_features, grad_kernels


@reassemble_backward.register_fake
def _reassemble_backward_fake(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int,
    down: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.empty_like(features, memory_format=memory_format_like(features)),
        torch.empty_like(kernels, memory_format=memory_format_like(kernels)),
    )


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
    features, kernels, kernel_size, scale, groups, down = inputs
    ctx.save_for_backward(features, kernels)
    ctx.params = (kernel_size, scale, groups, down)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple:
    features, kernels = ctx.saved_tensors
    grad_features, grad_kernels = torch.ops.carafe_exp.reassemble_backward(grad_output, features, kernels, *ctx.params)
    return grad_features, grad_kernels, None, None, None, None


reassemble.register_autograd(_backward, setup_context=_setup_context)


def forward_flops(features_shape: torch.Size, kernel_size: int, out_shape: torch.Size) -> int:
    """Multiply-adds ×2 of one forward pass: 2·C·k² per output pixel (per batch element)."""
    batch, channels = features_shape[0], features_shape[1]
    return 2 * batch * channels * kernel_size * kernel_size * out_shape[2] * out_shape[3]


@register_flop_formula(torch.ops.carafe_exp.reassemble)
def _reassemble_flops(features_shape, kernels_shape, kernel_size, scale, groups, down, *args, out_shape=None, **kwargs) -> int:
    return forward_flops(features_shape, kernel_size, out_shape)


@register_flop_formula(torch.ops.carafe_exp.reassemble_backward)
def _reassemble_backward_flops(
    grad_output_shape, features_shape, kernels_shape, kernel_size, scale, groups, down, *args, out_shape=None, **kwargs
) -> int:
    # Two gathers the size of the forward: one for the kernels, one for the features.
    return 2 * forward_flops(features_shape, kernel_size, grad_output_shape)

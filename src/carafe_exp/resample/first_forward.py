"""Check a resampler's output shape at its first forward, so a wrong module fails in one line naming the site.

Built-in resamplers are tested against the size contract; a class from outside the package
(``module:Class``, an entry point) is not, so :func:`check_first_output` hooks it: the first call
compares the output with (N, C, s·H, s·W) for an upsampler or (N, C, ⌈H/s⌉, ⌈W/s⌉) for a
downsampler and then removes the hook (no cost after the first step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from carafe_exp.errors import ConfigError


def expected_shape(kind: str, x: torch.Tensor, scale: int) -> tuple[int, ...]:
    """The output shape the contract of ``kind`` requires for input ``x``."""
    n, c, h, w = x.shape
    if kind == "upsampler":
        return (n, c, scale * h, scale * w)
    return (n, c, -(-h // scale), -(-w // scale))


def check_first_output(module: nn.Module, kind: str, name: str, scale: int, site: str | None) -> None:
    """Hook ``module`` so that its first forward raises a one-line ConfigError on a wrong output shape."""

    def hook(_module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        handle.remove()
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return
        where = f" at {site}" if site else ""
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"{kind}={name}{where}: forward returned {type(output).__name__}, not a tensor")
        expected = expected_shape(kind, x, scale)
        if tuple(output.shape) != expected:
            rule = "(N, C, s·H, s·W)" if kind == "upsampler" else "(N, C, ⌈H/s⌉, ⌈W/s⌉)"
            article = "an" if kind == "upsampler" else "a"
            raise ConfigError(f"{kind}={name}{where}: input {tuple(x.shape)} with scale {scale} gave output "
                              f"{tuple(output.shape)}; {article} {kind} must return {rule} = {expected}")

    handle = module.register_forward_hook(hook)


__all__ = ["check_first_output", "expected_shape"]

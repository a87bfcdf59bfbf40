"""Test inputs and an explicit-loop oracle for the reassembly-operator tests (imported by tests/ops)."""

from __future__ import annotations

import itertools

import torch

from carafe_exp.ops import kernels_shape, output_size

# (k, s, groups) every backend is checked on, up and down: odd k from the identity to beyond the
# papers' 5, scales 1-4, groups that split the channels.
CASE_GRID = list(itertools.product([1, 3, 5, 7], [1, 2, 3, 4], [1, 2, 4]))
CASE_IDS = [f"k{k}-s{s}-g{g}" for k, s, g in CASE_GRID]


def random_case(
    batch: int,
    channels: int,
    height: int,
    width: int,
    kernel_size: int,
    scale: int,
    groups: int,
    down: bool,
    dtype: torch.dtype = torch.float64,
    normalised: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and (softmax-normalised by default) kernels of a consistent shape."""
    features = torch.randn(batch, channels, height, width, dtype=torch.float64, generator=generator)
    shape = kernels_shape(features.shape, kernel_size, scale, groups, down)
    kernels = torch.randn(shape, dtype=torch.float64, generator=generator)
    if normalised:
        taps = kernel_size * kernel_size
        kernels = kernels.unflatten(1, (groups, taps)).softmax(2).flatten(1, 2)
    return features.to(dtype), kernels.to(dtype)


def grid_case(
    kernel_size: int, scale: int, groups: int, down: bool, dtype: torch.dtype = torch.float64, group_channels: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of one CASE_GRID case: odd map sizes, two channels per group (by default), a batch of 3 for half the cases."""
    batch = 3 if (kernel_size + scale) % 2 else 1
    height, width = (7, 5) if down else (5, 3)
    return random_case(batch, group_channels * groups, height, width, kernel_size, scale, groups, down, dtype=dtype)


def naive_reassemble(
    features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int, groups: int, down: bool
) -> torch.Tensor:
    """The defining formula as explicit loops (float64 numpy): an oracle independent of both backends."""
    import numpy as np  # here, not at import: the GPU tests run where torch may be all there is

    x = features.detach().double().numpy()
    k = kernels.detach().double().numpy()
    batch, channels, height, width = x.shape
    out_h, out_w = output_size(height, width, scale, down)
    radius = kernel_size // 2
    group_channels = channels // groups
    out = np.zeros((batch, channels, out_h, out_w))
    for y in range(out_h):
        for col in range(out_w):
            src_y, src_x = (y * scale, col * scale) if down else (y // scale, col // scale)
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    iy, ix = src_y + dy, src_x + dx
                    if not (0 <= iy < height and 0 <= ix < width):
                        continue
                    tap = (dy + radius) * kernel_size + (dx + radius)
                    for c in range(channels):
                        g = c // group_channels
                        out[:, c, y, col] += k[:, g * kernel_size**2 + tap, y, col] * x[:, c, iy, ix]
    return torch.from_numpy(out)


def float_tolerance(dtype: torch.dtype, expected: torch.Tensor) -> float:
    """Absolute error allowed for the op's sums computed in ``dtype`` (float accumulation for half types).

    Half types accumulate in float32 and round once: within 2 units in the last place of the largest
    value (a half-precision accumulator over tens of terms would be far off). float32 sums carry their
    own accumulation error, a few units in the last place; float64 is exact to ~1e-12.
    """
    units = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 16, torch.float64: 1e4}[dtype]
    return units * torch.finfo(dtype).eps * max(expected.abs().max().item(), 1e-30)


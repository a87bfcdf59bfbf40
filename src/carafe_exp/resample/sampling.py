"""Bilinear sampling at sub-pixel source positions: the shared core of GUM and DySample.

Coordinates and the sampling itself are computed in at least float32: under bf16/fp16 autocast a
half-precision coordinate cannot even address every pixel of a 512-wide map (bf16 has 8 mantissa
bits), so the learned offsets would be rounded away.

Coordinates are in input pixel indices (pixel ``i`` is centred at ``i``). The base position of
output pixel ``(Y, X)`` of a ×s upsampling is ``((Y + 0.5) / s - 0.5, (X + 0.5) / s - 0.5)``,
the ``align_corners=False`` convention of ``F.interpolate``; sampling there with border padding
reproduces bilinear interpolation exactly, so a learned offset of zero means "bilinear".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def coordinate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sampling positions are computed in: float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def upsampling_base_coords(height: int, width: int, scale: int, *, dtype: torch.dtype,
                           device: torch.device) -> torch.Tensor:
    """Source positions (2, s*H, s*W), x first then y, of a ×``scale`` bilinear upsampling."""
    ys = (torch.arange(height * scale, dtype=dtype, device=device) + 0.5) / scale - 0.5
    xs = (torch.arange(width * scale, dtype=dtype, device=device) + 0.5) / scale - 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y))


def sample_bilinear(features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``features`` (N, C, H, W) bilinearly at ``coords`` (N, 2, h, w) given in input pixel indices.

    Positions outside the map take the border value (``padding_mode="border"``), as DySample's
    official code and as ``F.interpolate`` does at the edges.
    """
    height, width = features.shape[-2:]
    # grid_sample with align_corners=False maps normalised g to pixel index (g + 1) * size / 2 - 0.5.
    grid_x = (coords[:, 0] + 0.5) * (2.0 / width) - 1.0
    grid_y = (coords[:, 1] + 0.5) * (2.0 / height) - 1.0
    compute_dtype = torch.promote_types(coordinate_dtype(features.dtype), coords.dtype)
    grid = torch.stack((grid_x, grid_y), dim=-1).to(compute_dtype)
    sampled = F.grid_sample(features.to(compute_dtype), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
    return sampled.to(features.dtype)

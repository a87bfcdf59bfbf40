"""Shared helpers for the resampler tests: a tiny unfold-based CARAFE written independently of ``carafe_exp.ops``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def unfold_carafe_up(x: torch.Tensor, kernels: torch.Tensor, k: int, s: int, groups: int = 1) -> torch.Tensor:
    """CARAFE upsampling by brute force: gather each k×k neighbourhood of (y//s, x//s) and weight it."""
    n, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).view(n, groups, c // groups, k * k, h, w)
    cols = cols.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
    weights = kernels.view(n, groups, 1, k * k, s * h, s * w)
    return (cols * weights).sum(dim=3).view(n, c, s * h, s * w)


def unfold_carafe_down(x: torch.Tensor, kernels: torch.Tensor, k: int, s: int, groups: int = 1) -> torch.Tensor:
    """CARAFE++ downsampling by brute force: the k×k neighbourhood of (s·y, s·x), weighted."""
    n, c, h, w = x.shape
    out_h, out_w = -(-h // s), -(-w // s)
    cols = F.unfold(x, k, padding=k // 2, stride=s).view(n, groups, c // groups, k * k, out_h, out_w)
    weights = kernels.view(n, groups, 1, k * k, out_h, out_w)
    return (cols * weights).sum(dim=3).view(n, c, out_h, out_w)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

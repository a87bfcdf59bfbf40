"""SAPA's similarity step, memory-lean: logits of each high-res query against its k×k low-res keys.

``logits[n, dy·k+dx, y, x] = Σ_c q[n, c, y, x] · key[n, c, ⌊y/s⌋+dy−r, ⌊x/s⌋+dx−r]`` with
r = k // 2 and a zero key outside the map (so an out-of-range neighbour has logit 0, as the
official CUDA ``sim`` op and its ``forward_check.py`` reference). The layout of the result is the
CARAFE op's kernel layout, so ``softmax`` + ``ops.carafe`` finish SAPA.

The obvious PyTorch form unfolds the keys (d·k²·H·W) and broadcasts them over the s² sub-pixels,
and autograd keeps that k²-times-larger copy for backward. :class:`NeighbourSimilarity` keeps only
``q`` and ``key`` and loops over the k² neighbours in both passes, each step a view of the padded
key and one batched product, so the extra memory is one (N, d, s·H, s·W)-sized temporary.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _sub_pixel_view(q: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, d, sH, sW) → (N, d, H, s, W, s), a view."""
    n, d, sh, sw = q.shape
    return q.view(n, d, sh // scale, scale, sw // scale, scale)


class NeighbourSimilarity(torch.autograd.Function):
    """Autograd function behind :func:`neighbour_similarity` (saves only its two inputs)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, key: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
        n, _, height, width = key.shape
        r = kernel_size // 2
        padded = F.pad(key, (r, r, r, r))
        q6 = _sub_pixel_view(q.contiguous(), scale)
        logits = q.new_empty(n, kernel_size * kernel_size, height, scale, width, scale)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                window = padded[:, :, dy:dy + height, dx:dx + width]
                logits[:, dy * kernel_size + dx] = torch.einsum("ncyaxb,ncyx->nyaxb", q6, window)
        ctx.save_for_backward(q, key)
        ctx.kernel_size, ctx.scale = kernel_size, scale
        return logits.view(n, kernel_size * kernel_size, height * scale, width * scale)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        q, key = ctx.saved_tensors
        kernel_size, scale = ctx.kernel_size, ctx.scale
        n, _, height, width = key.shape
        r = kernel_size // 2
        padded = F.pad(key, (r, r, r, r))
        q6 = _sub_pixel_view(q.contiguous(), scale)
        grad6 = grad.contiguous().view(n, kernel_size * kernel_size, height, scale, width, scale)
        grad_q = torch.zeros_like(q6) if ctx.needs_input_grad[0] else None
        grad_padded = torch.zeros_like(padded) if ctx.needs_input_grad[1] else None
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                g = grad6[:, dy * kernel_size + dx]
                if grad_q is not None:
                    grad_q += torch.einsum("nyaxb,ncyx->ncyaxb", g, padded[:, :, dy:dy + height, dx:dx + width])
                if grad_padded is not None:
                    grad_padded[:, :, dy:dy + height, dx:dx + width] += torch.einsum("nyaxb,ncyaxb->ncyx", g, q6)
        grad_key = None if grad_padded is None else grad_padded[:, :, r:r + height, r:r + width].contiguous()
        return (None if grad_q is None else grad_q.view_as(q)), grad_key, None, None


def neighbour_similarity(q: torch.Tensor, key: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """Logits (N, k², s·H, s·W) of high-res queries ``q`` (N, d, sH, sW) against keys (N, d, H, W)."""
    if q.dim() != 4 or key.dim() != 4 or q.shape[:2] != key.shape[:2]:
        raise ValueError(f"neighbour_similarity: q {tuple(q.shape)} and key {tuple(key.shape)} must be (N, d, ·, ·) "
                         f"with the same N and d")
    if tuple(q.shape[-2:]) != (scale * key.shape[-2], scale * key.shape[-1]):
        raise ValueError(f"neighbour_similarity: q {tuple(q.shape)} must be {scale}× key {tuple(key.shape)}")
    return NeighbourSimilarity.apply(q, key, kernel_size, scale)


__all__ = ["NeighbourSimilarity", "neighbour_similarity"]

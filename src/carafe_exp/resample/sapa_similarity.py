"""SAPA's similarity step, memory-lean: logits of each high-res query against its k×k low-res keys.

``logits[n, dy·k+dx, y, x] = Σ_c q[n, c, y, x] · key[n, c, ⌊y/s⌋+dy−r, ⌊x/s⌋+dx−r]`` with
r = k // 2 and a zero key outside the map (so an out-of-range neighbour has logit 0, as the
official CUDA ``sim`` op and its ``forward_check.py`` reference). The layout of the result is the
CARAFE op's kernel layout, so ``softmax`` + ``ops.carafe`` finish SAPA.

The obvious PyTorch form unfolds the keys (d·k²·H·W) and broadcasts them over the s² sub-pixels,
and autograd keeps that k²-times-larger copy for backward. :class:`NeighbourSimilarity` keeps only
``q`` and ``key`` and loops over the k² neighbours in both passes, each step a view of the padded
key and one batched product, so the extra memory is a channels-last copy of ``q`` (and of the
keys) and the logits themselves.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _queries_last(q: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, d, sH, sW) → (N, H, W, s², d): each low-res cell's s² queries as rows of a matrix."""
    n, d, sh, sw = q.shape
    h, w = sh // scale, sw // scale
    return q.reshape(n, d, h, scale, w, scale).permute(0, 2, 4, 3, 5, 1).reshape(n, h, w, scale * scale, d)


def _padded_keys_last(key: torch.Tensor, r: int) -> torch.Tensor:
    """Zero-padded keys, channels last: (N, H+2r, W+2r, d); neighbour (dy, dx) is a view of it."""
    return F.pad(key, (r, r, r, r)).permute(0, 2, 3, 1)


class NeighbourSimilarity(torch.autograd.Function):
    """Autograd function behind :func:`neighbour_similarity` (saves only its two inputs).

    Channels last, each low-res cell's s² queries form an (s², d) matrix and each neighbour's key
    a (d, 1) column, so one batched matmul per neighbour gives all s² logits of that neighbour.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, key: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
        n, _, height, width = key.shape
        r = kernel_size // 2
        queries = _queries_last(q, scale)
        keys = _padded_keys_last(key, r)
        taps = kernel_size * kernel_size
        logits = q.new_empty(n, height, width, scale * scale, taps)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                window = keys[:, dy:dy + height, dx:dx + width].unsqueeze(-1)  # (N, H, W, d, 1)
                logits[..., dy * kernel_size + dx] = torch.matmul(queries, window).squeeze(-1)
        ctx.save_for_backward(q, key)
        ctx.kernel_size, ctx.scale = kernel_size, scale
        # (N, H, W, a, b, k²) → (N, k², H·s, W·s): the CARAFE op's kernel layout.
        logits = logits.view(n, height, width, scale, scale, taps).permute(0, 5, 1, 3, 2, 4)
        return logits.reshape(n, taps, height * scale, width * scale)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        q, key = ctx.saved_tensors
        kernel_size, scale = ctx.kernel_size, ctx.scale
        n, d, height, width = key.shape
        r = kernel_size // 2
        taps = kernel_size * kernel_size
        queries = _queries_last(q, scale)
        keys = _padded_keys_last(key, r)
        # (N, k², H·s, W·s) → (N, H, W, s², k²), matching the forward's logits.
        grads = grad.reshape(n, taps, height, scale, width, scale).permute(0, 2, 4, 3, 5, 1)
        grads = grads.reshape(n, height, width, scale * scale, taps)
        grad_queries = torch.zeros_like(queries) if ctx.needs_input_grad[0] else None
        grad_keys = q.new_zeros(n, height + 2 * r, width + 2 * r, d) if ctx.needs_input_grad[1] else None
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                g = grads[..., dy * kernel_size + dx].unsqueeze(-1)  # (N, H, W, s², 1)
                if grad_queries is not None:
                    window = keys[:, dy:dy + height, dx:dx + width].unsqueeze(-2)  # (N, H, W, 1, d)
                    grad_queries.addcmul_(g, window)
                if grad_keys is not None:
                    grad_keys[:, dy:dy + height, dx:dx + width] += torch.matmul(g.transpose(-1, -2), queries).squeeze(-2)
        grad_q = grad_key = None
        if grad_queries is not None:
            grad_q = grad_queries.view(n, height, width, scale, scale, d).permute(0, 5, 1, 3, 2, 4)
            grad_q = grad_q.reshape(n, d, height * scale, width * scale)
        if grad_keys is not None:
            grad_key = grad_keys[:, r:r + height, r:r + width].permute(0, 3, 1, 2).contiguous()
        return grad_q, grad_key, None, None


def neighbour_similarity(q: torch.Tensor, key: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """Logits (N, k², s·H, s·W) of high-res queries ``q`` (N, d, sH, sW) against keys (N, d, H, W)."""
    if q.dim() != 4 or key.dim() != 4 or q.shape[:2] != key.shape[:2]:
        raise ValueError(f"neighbour_similarity: q {tuple(q.shape)} and key {tuple(key.shape)} must be (N, d, ·, ·) "
                         f"with the same N and d")
    if tuple(q.shape[-2:]) != (scale * key.shape[-2], scale * key.shape[-1]):
        raise ValueError(f"neighbour_similarity: q {tuple(q.shape)} must be {scale}× key {tuple(key.shape)}")
    return NeighbourSimilarity.apply(q, key, kernel_size, scale)


__all__ = ["NeighbourSimilarity", "neighbour_similarity"]

"""scripts/bench_op.py times each CUDA kernel set through the whole forward+backward call.

The benchmark's rows decide the default kernel set, so a row named for one set must not time the
forward of that set with the backward of another (as it did when the choice was restored before
``.backward()`` ran). The CUDA emulation keeps a kernel choice the way the extension does
(``set_cuda_kernels``; calls with ``cuda_kernels="current"`` follow it) and records every launch,
so the benchmark's own wrapper is run around an emulated op and the launches are checked.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from ops.op_cases import random_case

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench_op():
    sys.path.insert(0, str(SCRIPTS))  # bench_op imports its neighbour machine.py
    try:
        yield importlib.import_module("bench_op")
    finally:
        sys.path.remove(str(SCRIPTS))


def _emulated_op(emulation):
    """carafe (k=5, s=2) through the emulated CUDA kernels of the emulation's current choice."""

    class EmulatedCarafe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, features, kernels):
            ctx.save_for_backward(features, kernels)
            return emulation.forward(features, kernels, 5, 2, 1, False, False, "current", emulation.max_blocks, "ascending")

        @staticmethod
        def backward(ctx, grad_output):
            features, kernels = ctx.saved_tensors
            return emulation.backward(
                grad_output.contiguous(), features, kernels, 5, 2, 1, False, False, False, "current",
                emulation.max_blocks, "ascending",
            )  # fmt: skip

    return EmulatedCarafe.apply


@pytest.mark.parametrize("kernel_set", ["tiled", "simple"])
def test_kernel_set_is_held_through_backward(kernel_set: str, bench_op, cuda_emulation) -> None:
    features, kernels = random_case(1, 16, 6, 5, 5, 2, 1, False, dtype=torch.float32)
    grad_output = torch.ones(1, 16, 12, 10)
    other = "simple" if kernel_set == "tiled" else "tiled"
    cuda_emulation.set_cuda_kernels(other)
    try:
        forward, training = bench_op.timed_steps(
            _emulated_op(cuda_emulation), kernel_set, features, kernels, grad_output, cuda_emulation
        )
        for step, passes in ((forward, 1), (training, 3)):
            cuda_emulation.clear_launches()
            step()
            names = [launch["name"] for launch in cuda_emulation.launches()]
            assert len(names) == passes and all(f"_{kernel_set}" in name for name in names), names
            assert cuda_emulation.cuda_kernels() == other  # the previous choice is back after each call
    finally:
        cuda_emulation.set_cuda_kernels("simple")

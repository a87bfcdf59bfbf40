"""Large k·s on the compiled CPU kernels: any odd k and any s, never a crash.

The forward pass sizes its column blocks from a weight budget divided by band·s²·k²; for large
k·s that quotient was 0 and was divided by, killing the process with SIGFPE (float32 k=41 s=4
and k=21 s=8, float64 k=57 s=2, downsampling k=157). This sweeps k and s past those sizes on tiny
maps, every dtype, up and down, forward and backward, against the reference.
"""

from __future__ import annotations

import pytest
import torch

from carafe_exp.ops import carafe, carafe_down, reassemble_reference
from ops.op_cases import float_tolerance, random_case

# Each crashed before in at least one dtype: float32 and the half types (accumulating in float32)
# from k=41 at s=4 and k=21 at s=8, float64 from k=57 at s=2 (and k=29 at s=4, k=15 at s=8).
UP = [(21, 2), (21, 4), (21, 8), (41, 2), (41, 4), (57, 2)]
DOWN = [(101, 2), (157, 2), (157, 3), (157, 4)]
CASES = [(k, s, False) for k, s in UP] + [(k, s, True) for k, s in DOWN]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("k", "s", "down"), CASES, ids=[f"{'down' if d else 'up'}-k{k}-s{s}" for k, s, d in CASES])
def test_large_kernels_and_scales(k: int, s: int, down: bool, dtype: torch.dtype, compiled_extension) -> None:
    # 4 task rows (input rows up, output rows down): the forward's full band of rows, which
    # multiplies the weight buffer; the width does not matter.
    height, width = (3 * s + 1, 3) if down else (4, 3)
    features, kernels = random_case(1, 4, height, width, k, s, 2, down)
    features, kernels = features.to(dtype), kernels.to(dtype)  # representable in dtype
    op = carafe_down if down else carafe
    exact_features = features.double().requires_grad_()
    exact_kernels = kernels.double().requires_grad_()
    expected = reassemble_reference(exact_features, exact_kernels, k, s, 2, down)
    grad_output = torch.randn(expected.shape, dtype=torch.float64).to(dtype)
    expected.backward(grad_output.double())

    features.requires_grad_()
    kernels.requires_grad_()
    out = op(features, kernels, k, s, 2, backend="compiled")
    out.backward(grad_output)
    for got, want in ((out, expected), (features.grad, exact_features.grad), (kernels.grad, exact_kernels.grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want.detach(), rtol=0, atol=float_tolerance(dtype, want))

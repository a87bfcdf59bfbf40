"""The pure-PyTorch reference against an explicit-loop oracle, gradcheck and float32 accumulation."""

from __future__ import annotations

import pytest
import torch

from carafe_exp.ops import carafe, carafe_down, kernels_shape, reassemble_reference
from ops.op_cases import naive_reassemble, random_case

CASES = [
    # (batch, channels, height, width, k, s, groups)
    (1, 4, 3, 5, 3, 2, 1),
    (2, 4, 4, 3, 5, 2, 2),
    (1, 6, 5, 5, 1, 3, 3),
    (1, 4, 2, 3, 7, 4, 4),
    (1, 2, 5, 4, 3, 1, 1),
]


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("case", CASES)
def test_reference_matches_explicit_loops(case: tuple, down: bool) -> None:
    batch, channels, height, width, k, s, groups = case
    features, kernels = random_case(batch, channels, height, width, k, s, groups, down, normalised=False)
    expected = naive_reassemble(features, kernels, k, s, groups, down)
    torch.testing.assert_close(reassemble_reference(features, kernels, k, s, groups, down), expected)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_reference_gradcheck(down: bool) -> None:
    features, kernels = random_case(1, 4, 3, 4, 3, 2, 2, down)
    features.requires_grad_()
    kernels.requires_grad_()
    op = carafe_down if down else carafe
    assert torch.autograd.gradcheck(lambda x, w: op(x, w, 3, 2, 2, backend="reference"), (features, kernels))


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_reference_accumulates_half_types_in_float32(dtype: torch.dtype, down: bool) -> None:
    """DESIGN.md, the reassembly operator: half types accumulate in float32 on every backend.

    With 121 positive terms per output (k = 11) a half-precision running sum drifts by many units in
    the last place; summed in float32 and rounded once, the result is within one unit of the exact
    sum of the same (half-representable) inputs. Forward and both gradients.
    """
    generator = torch.Generator().manual_seed(0)
    features = (torch.rand(2, 4, 6, 7, generator=generator) + 1).to(dtype)
    kernels = torch.randn(kernels_shape(features.shape, 11, 2, 2, down), generator=generator)
    kernels = kernels.unflatten(1, (2, 121)).softmax(2).flatten(1, 2).to(dtype)
    exact = [t.double().requires_grad_() for t in (features, kernels)]
    low = [t.clone().requires_grad_() for t in (features, kernels)]
    expected = reassemble_reference(*exact, 11, 2, 2, down)
    out = reassemble_reference(*low, 11, 2, 2, down)
    grad_output = (torch.rand(out.shape, generator=generator) + 1).to(dtype)
    expected.backward(grad_output.double())
    out.backward(grad_output)
    eps = torch.finfo(dtype).eps
    for got, want in ((out, expected), (low[0].grad, exact[0].grad), (low[1].grad, exact[1].grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want.detach(), rtol=0, atol=eps * want.abs().max().item())

"""The pure-PyTorch reference against an explicit-loop oracle, gradcheck and algebraic properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    scale=st.integers(1, 4),
    channels=st.integers(1, 3),
)
def test_k1_unit_kernels_are_nearest_upsampling(height: int, width: int, scale: int, channels: int) -> None:
    features = torch.randn(2, channels, height, width, dtype=torch.float64)
    kernels = torch.ones(2, 1, height * scale, width * scale, dtype=torch.float64)
    expected = F.interpolate(features, scale_factor=scale, mode="nearest")
    for backend in ("reference", "compiled"):
        torch.testing.assert_close(carafe(features, kernels, 1, scale, backend=backend), expected)


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), scale=st.integers(1, 4))
def test_k1_unit_kernels_downsample_by_striding(height: int, width: int, scale: int) -> None:
    features = torch.randn(1, 2, height, width, dtype=torch.float64)
    kernels = torch.ones(1, 1, -(-height // scale), -(-width // scale), dtype=torch.float64)
    expected = features[:, :, ::scale, ::scale]
    for backend in ("reference", "compiled"):
        torch.testing.assert_close(carafe_down(features, kernels, 1, scale, backend=backend), expected)


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    kernel_size=st.sampled_from([1, 3, 5]),
    scale=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    down=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_cases_match_oracle_and_are_linear(
    height: int, width: int, kernel_size: int, scale: int, groups: int, down: bool, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    x1, kernels = random_case(1, 2 * groups, height, width, kernel_size, scale, groups, down, generator=generator)
    x2, _ = random_case(1, 2 * groups, height, width, kernel_size, scale, groups, down, generator=generator)
    op = carafe_down if down else carafe
    expected = naive_reassemble(x1, kernels, kernel_size, scale, groups, down)
    for backend in ("reference", "compiled"):
        out1 = op(x1, kernels, kernel_size, scale, groups, backend=backend)
        torch.testing.assert_close(out1, expected)
        # Linear in the features for fixed kernels.
        out2 = op(x2, kernels, kernel_size, scale, groups, backend=backend)
        combined = op(2.0 * x1 - 3.0 * x2, kernels, kernel_size, scale, groups, backend=backend)
        torch.testing.assert_close(combined, 2.0 * out1 - 3.0 * out2)

"""Properties every backend must have, on random cases (hypothesis): nearest up/strided down at k=1,
agreement with the explicit-loop oracle, linearity in the features.

Skipped where hypothesis is not installed (a GPU machine with torch alone).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from carafe_exp.ops import carafe, carafe_down  # noqa: E402
from ops.op_cases import naive_reassemble, random_case  # noqa: E402


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

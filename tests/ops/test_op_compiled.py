"""The compiled extension (CPU) against the reference: values, gradients, layouts, dtypes, determinism."""

from __future__ import annotations

import pytest
import torch

from carafe_exp.ops import carafe, carafe_down
from ops.op_cases import CASE_GRID, CASE_IDS, grid_case, random_case


def _forward_backward(op, features, kernels, k, s, groups, backend, grad_output=None):
    features = features.detach().clone().requires_grad_()
    kernels = kernels.detach().clone().requires_grad_()
    out = op(features, kernels, k, s, groups, backend=backend)
    if grad_output is None:
        grad_output = torch.randn_like(out)
    out.backward(grad_output)
    return out, features.grad, kernels.grad, grad_output


def _assert_backends_agree(op, features, kernels, k, s, groups, **tolerance) -> None:
    ref = _forward_backward(op, features, kernels, k, s, groups, "reference")
    got = _forward_backward(op, features, kernels, k, s, groups, "compiled", grad_output=ref[3])
    for name, expected, actual in zip(("output", "grad_features", "grad_kernels"), ref[:3], got[:3]):
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{name}: {m}", **tolerance)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize(("k", "s", "groups"), CASE_GRID, ids=CASE_IDS)
def test_compiled_matches_reference(k: int, s: int, groups: int, down: bool, compiled_extension) -> None:
    op = carafe_down if down else carafe
    features, kernels = grid_case(k, s, groups, down)
    _assert_backends_agree(op, features, kernels, k, s, groups)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous", "expanded_batch"])
def test_compiled_reads_strided_inputs(layout: str, down: bool, compiled_extension) -> None:
    op = carafe_down if down else carafe
    features, kernels = random_case(2, 8, 9, 11, 5, 2, 2, down)
    if layout == "channels_last":
        features = features.contiguous(memory_format=torch.channels_last)
        kernels = kernels.contiguous(memory_format=torch.channels_last)
    elif layout == "non_contiguous":
        # Every other column of a wider tensor, and a transposed-then-transposed-back view.
        wide = torch.randn(2, 8, 9, 22, dtype=torch.float64)
        features = wide[..., ::2]
        kernels = kernels.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        features = features[:1].expand(2, -1, -1, -1)
    assert not features.is_contiguous() or not kernels.is_contiguous()
    _assert_backends_agree(op, features, kernels, 5, 2, 2)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_channels_last_in_channels_last_out(down: bool, compiled_extension) -> None:
    op = carafe_down if down else carafe
    features, kernels = random_case(1, 4, 6, 6, 3, 2, 1, down, dtype=torch.float32)
    features = features.contiguous(memory_format=torch.channels_last)
    out = op(features, kernels, 3, 2, backend="compiled")
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_compiled_gradcheck(down: bool, compiled_extension) -> None:
    features, kernels = random_case(1, 4, 3, 4, 3, 2, 2, down)
    features.requires_grad_()
    kernels.requires_grad_()
    op = carafe_down if down else carafe
    assert torch.autograd.gradcheck(lambda x, w: op(x, w, 3, 2, 2, backend="compiled"), (features, kernels))


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_wide_rows_span_several_column_blocks(down: bool, compiled_extension) -> None:
    # The kernels process columns in blocks of 256 outputs; odd widths exercise the seams.
    op = carafe_down if down else carafe
    features, kernels = random_case(1, 4, 3, 301 if down else 157, 5, 2, 2, down)
    _assert_backends_agree(op, features, kernels, 5, 2, 2)


def test_many_kernel_channels(compiled_extension) -> None:
    # k²·groups = 81·8 = 648 > 384, where mmcv's CUDA kernel runs out of shared memory.
    features, kernels = random_case(1, 16, 4, 4, 9, 2, 8, False)
    _assert_backends_agree(carafe, features, kernels, 9, 2, 8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_half_types_close_to_float64(dtype: torch.dtype, down: bool, backend: str, compiled_extension) -> None:
    op = carafe_down if down else carafe
    features, kernels = random_case(2, 8, 9, 7, 5, 2, 2, down, dtype=dtype)
    grad_output = torch.randn(op(features.double(), kernels.double(), 5, 2, 2).shape, dtype=torch.float64)
    exact = _forward_backward(op, features.double(), kernels.double(), 5, 2, 2, "reference", grad_output.clone())
    low = _forward_backward(op, features, kernels, 5, 2, 2, backend, grad_output.to(dtype))
    eps = torch.finfo(dtype).eps
    # Both backends accumulate in float32 and round once.
    for expected, actual in zip(exact[:3], low[:3]):
        assert actual.dtype == dtype
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual.double(), expected, rtol=0, atol=2 * eps * scale)


def test_backward_is_deterministic(compiled_extension) -> None:
    for op, down in ((carafe, False), (carafe_down, True)):
        features, kernels = random_case(2, 16, 13, 17, 5, 2, 4, down, dtype=torch.float32)
        first = _forward_backward(op, features, kernels, 5, 2, 4, "compiled")
        second = _forward_backward(op, features, kernels, 5, 2, 4, "compiled", grad_output=first[3])
        for a, b in zip(first[:3], second[:3]):
            assert torch.equal(a, b)


def test_empty_batch(compiled_extension) -> None:
    features, kernels = random_case(0, 4, 3, 3, 3, 2, 1, False)
    for backend in ("compiled", "reference"):
        out, grad_features, grad_kernels, _ = _forward_backward(carafe, features, kernels, 3, 2, 1, backend)
        assert out.shape == (0, 4, 6, 6) and grad_features.shape == features.shape


@pytest.mark.parametrize(("s", "down"), [(2, False), (3, False), (2, True)], ids=["up2", "up3", "down2"])
def test_channel_tiles_and_splits(s: int, down: bool, compiled_extension) -> None:
    # 203 channels in one group: several register tiles of channels plus a partial one, and,
    # on a map this small, the group's channels are split over tasks.
    op = carafe_down if down else carafe
    features, kernels = random_case(1, 203, 3, 5, 5, s, 1, down)
    _assert_backends_agree(op, features, kernels, 5, s, 1)


@pytest.mark.slow
def test_output_larger_than_the_cache_streams_correctly(compiled_extension) -> None:
    # A 96 MiB output (and a 24 MiB feature gradient) is written with streaming stores; smaller
    # ones with plain stores, which every other test covers.
    generator = torch.Generator().manual_seed(0)
    features, kernels = random_case(1, 256, 96, 256, 5, 2, 1, False, dtype=torch.float32, generator=generator)
    # float32 sums of 25 (output) and 256 (kernel gradient) products: rounding up to ~1e-5.
    _assert_backends_agree(carafe, features, kernels, 5, 2, 1, rtol=1e-4, atol=1e-4)


def test_forward_into_a_given_output(compiled_extension) -> None:
    # The benchmark times the kernels apart from the allocation through forward_into.
    features, kernels = random_case(2, 6, 5, 7, 3, 2, 1, False, dtype=torch.float32)
    target = torch.full((2, 6, 10, 14), float("nan"))
    compiled_extension.forward_into(features, kernels, 3, 2, 1, False, target)
    torch.testing.assert_close(target, carafe(features, kernels, 3, 2, backend="reference"))
    with pytest.raises(RuntimeError, match=r"output has shape \[2, 6, 10, 13\].*expected \(2, 6, 10, 14\)"):
        compiled_extension.forward_into(features, kernels, 3, 2, 1, False, torch.empty(2, 6, 10, 13))

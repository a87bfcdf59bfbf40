"""CUDA kernels against the float64 reference on the CPU (skipped without CUDA).

Every kernel choice runs: ``simple`` (the default), ``tiled`` (csrc/carafe_cuda_tiled.cuh) and ``auto``
(per call from the launch shape, carafe_cuda_plan.h). Outputs are filled with NaN before every
launch (the extension's ``set_fill_outputs_with_nan``), so an element no thread writes fails the
comparison instead of reading back a previous call's value. Without a GPU the same kernels are
executed by the CUDA emulation (test_op_cuda_emulation.py).
"""

from __future__ import annotations

import pytest
import torch

from carafe_exp.ops import carafe, carafe_down
from ops.op_cases import CASE_GRID, CASE_IDS, random_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(params=["simple", "tiled", "auto"])
def cuda_kernels(request: pytest.FixtureRequest, compiled_extension):
    """Runs the test with each choice of CUDA kernels and NaN-filled outputs, restoring both afterwards."""
    previous = compiled_extension.cuda_kernels()
    compiled_extension.set_cuda_kernels(request.param)
    compiled_extension.set_fill_outputs_with_nan(True)
    yield request.param
    compiled_extension.set_fill_outputs_with_nan(False)
    compiled_extension.set_cuda_kernels(previous)


def _run(op, features, kernels, k, s, groups, backend, grad_output):
    features = features.detach().clone().requires_grad_()
    kernels = kernels.detach().clone().requires_grad_()
    out = op(features, kernels, k, s, groups, backend=backend)
    out.backward(grad_output.to(device=out.device, dtype=out.dtype))
    return out, features.grad, kernels.grad


def _compare_with_cpu_reference(op, features, kernels, k, s, groups, dtype=torch.float64, prepare=None):
    """Run on CUDA (in ``dtype``, after ``prepare``), compare with the float64 CPU reference."""
    grad_output = torch.randn(op(features, kernels, k, s, groups, backend="reference").shape, dtype=torch.float64)
    grad_output = grad_output.to(dtype).double()  # representable in dtype: only the op's error counts
    expected = _run(op, features, kernels, k, s, groups, "reference", grad_output)
    cuda_features, cuda_kernels = features.to("cuda", dtype), kernels.to("cuda", dtype)
    if prepare is not None:
        cuda_features, cuda_kernels = prepare(cuda_features), prepare(cuda_kernels)
    actual = _run(op, cuda_features, cuda_kernels, k, s, groups, "compiled", grad_output)
    eps = torch.finfo(dtype).eps
    for want, got in zip(expected, actual):
        assert got.device.type == "cuda" and got.dtype == dtype
        atol = 1e-10 if dtype == torch.float64 else 4 * eps * max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=atol)
    return actual


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize(("k", "s", "groups"), CASE_GRID, ids=CASE_IDS)
def test_cuda_matches_reference(k: int, s: int, groups: int, down: bool, cuda_kernels: str) -> None:
    op = carafe_down if down else carafe
    features, kernels = random_case(3 if k % 2 else 1, 2 * groups, 7, 5, k, s, groups, down)
    _compare_with_cpu_reference(op, features, kernels, k, s, groups)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
def test_cuda_strided_inputs(layout: str, down: bool, cuda_kernels: str) -> None:
    op = carafe_down if down else carafe
    features, kernels = random_case(2, 8, 9, 11, 5, 2, 2, down)

    def prepare(t: torch.Tensor) -> torch.Tensor:
        if layout == "channels_last":
            return t.contiguous(memory_format=torch.channels_last)
        return t.transpose(2, 3).contiguous().transpose(2, 3)

    _compare_with_cpu_reference(op, features, kernels, 5, 2, 2, prepare=prepare)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_cuda_dtypes(dtype: torch.dtype, down: bool, cuda_kernels: str) -> None:
    op = carafe_down if down else carafe
    features, kernels = random_case(2, 8, 9, 7, 5, 2, 2, down)
    # Round the inputs to the dtype first so only the op's own error is measured.
    features, kernels = features.to(dtype).double(), kernels.to(dtype).double()
    _compare_with_cpu_reference(op, features, kernels, 5, 2, 2, dtype=dtype)


def test_cuda_many_kernel_channels(cuda_kernels: str) -> None:
    features, kernels = random_case(1, 16, 4, 4, 9, 2, 8, False)
    _compare_with_cpu_reference(carafe, features, kernels, 9, 2, 8)


def test_cuda_backward_is_deterministic(cuda_kernels: str) -> None:
    features, kernels = random_case(2, 32, 33, 29, 5, 2, 4, False, dtype=torch.float32)
    features, kernels = features.cuda(), kernels.cuda()
    grad_output = torch.randn(2, 32, 66, 58, device="cuda")
    first = _run(carafe, features, kernels, 5, 2, 4, "compiled", grad_output)
    second = _run(carafe, features, kernels, 5, 2, 4, "compiled", grad_output)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cuda_torch_compile(cuda_kernels: str) -> None:
    features, kernels = random_case(2, 4, 5, 7, 3, 2, 2, False, dtype=torch.float32)
    features, kernels = features.cuda(), kernels.cuda()

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return carafe(x * 2, w, 3, 2, 2, backend="compiled").relu()

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(features, kernels), f(features, kernels))


def test_cuda_split_and_cells_match_reference(cuda_kernels: str) -> None:
    # Few tiles and many channels: on a large GPU the tiled kernels split the channels across blocks
    # and compute 2x2 outputs per thread (see test_op_cuda_plan.py).
    features, kernels = random_case(2, 64, 7, 9, 5, 2, 1, False)
    _compare_with_cpu_reference(carafe, features, kernels, 5, 2, 1, dtype=torch.float32)


def test_cuda_grad_output_on_another_device_is_an_error(compiled_extension) -> None:
    features, kernels = random_case(1, 4, 3, 3, 3, 2, 1, False, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="grad_output is on cpu but features are on cuda"):
        compiled_extension.backward(
            torch.zeros(1, 4, 6, 6), features.cuda(), kernels.cuda(), 3, 2, 1, False, False, False
        )

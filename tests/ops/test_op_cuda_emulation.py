"""The CUDA kernels, executed on the CPU by the CUDA emulation build, against the reference.

``csrc/emulation/`` compiles the kernels (``carafe_cuda_simple.cuh``, ``carafe_cuda_tiled.cuh``)
and their dispatch (``carafe_cuda_dispatch.h``) unchanged as host code: each block's threads run
as fibers, phase by phase between ``__syncthreads()`` barriers, with poisoned shared memory. These
tests run both kernel sets on the grid of cases the compiled CPU kernels are checked on
(tests/ops/test_op_compiled.py), forward and backward, plus dtypes, layouts, large k and capped
grids, and show that the emulation itself catches what a GPU would expose. Outputs start as NaN
before every emulated launch, so an element no thread writes fails the comparison.

The tiled kernels come in the shapes carafe_cuda_plan.h gives them for a large GPU: one thread per
source pixel computing its s x s outputs (forward, upsampling by 2 or 4: ``forward_tiled_cells``)
and a group's channels split across blocks when a map has too few tiles for the multiprocessors
(``splits`` in the plan). ``plan()`` says which kernels and shape each pass of a call gets; the
launches the emulation records are checked against it.
"""

from __future__ import annotations

import functools

import pytest
import torch

from carafe_exp.ops import reassemble_reference
from carafe_exp.ops.geometry import is_channels_last
from ops.op_cases import CASE_GRID, CASE_IDS, float_tolerance, grid_case, random_case

KERNEL_SETS = ["simple", "tiled", "auto"]
# An H100/H200 (132 multiprocessors): the kernels' default shaping target.
H200_MULTIPROCESSORS = 132


def _reference(features, kernels, k, s, groups, down, grad_output):
    """Output and both gradients of the pure-PyTorch reference (float64)."""
    features = features.detach().double().requires_grad_()
    kernels = kernels.detach().double().requires_grad_()
    out = reassemble_reference(features, kernels, k, s, groups, down)
    out.backward(grad_output.double())
    return out.detach(), features.grad, kernels.grad


def _emulated(
    emulation, features, kernels, k, s, groups, down, grad_output, cuda_kernels, *, max_blocks=None, order="ascending",
    multiprocessors=H200_MULTIPROCESSORS,
):  # fmt: skip
    """Output and both gradients of the CUDA kernels run by the emulation, and the launches it made."""
    max_blocks = emulation.max_blocks if max_blocks is None else max_blocks
    emulation.clear_launches()
    out = emulation.forward(
        features, kernels, k, s, groups, down, is_channels_last(features), cuda_kernels, max_blocks, order, multiprocessors
    )
    grad_features, grad_kernels = emulation.backward(
        grad_output, features, kernels, k, s, groups, down,
        is_channels_last(features), is_channels_last(kernels), cuda_kernels, max_blocks, order, multiprocessors,
    )  # fmt: skip
    return (out, grad_features, grad_kernels), emulation.launches()


def _planned_launches(emulation, features, k, s, groups, down, cuda_kernels, multiprocessors=H200_MULTIPROCESSORS):
    """The kernel names plan() says a call makes (forward, grad_kernels, grad_features), and the plan."""
    dtype = str(features.dtype).removeprefix("torch.")
    plan = emulation.plan(list(features.shape), k, s, groups, down, dtype, cuda_kernels, multiprocessors)
    names = []
    for name in ("forward", "grad_kernels", "grad_features"):
        entry = plan[name]
        cells = "_cells" if entry["kernels"] == "tiled" and entry["cell"] > 1 else ""
        names.append(f"{name}_{entry['kernels']}{cells}")
    return names, plan


def _assert_matches(actual, expected, **tolerance) -> None:
    for name, got, want in zip(("output", "grad_features", "grad_kernels"), actual, expected):
        torch.testing.assert_close(got.double(), want, msg=lambda m, name=name: f"{name}: {m}", **tolerance)


@functools.lru_cache(maxsize=None)
def _grid_reference(k: int, s: int, groups: int, down: bool, group_channels: int = 2):
    """Inputs, grad_output and reference results of one grid case, shared by the kernel variants."""
    torch.manual_seed(k * 100 + s * 10 + groups + 1000 * down + 10000 * group_channels)
    features, kernels = grid_case(k, s, groups, down, group_channels=group_channels)
    out = reassemble_reference(features, kernels, k, s, groups, down)
    grad_output = torch.randn_like(out)
    return features, kernels, grad_output, _reference(features, kernels, k, s, groups, down, grad_output)


# (kernel set, channels per group) of the grid: 2 channels per group leave nothing to split; at 36 a
# large GPU splits each group's channels across two blocks (20 and 16 channels, a partial vector).
GRID_VARIANTS = [("simple", 2), ("tiled", 2), ("tiled", 36)]
GRID_VARIANT_IDS = ["simple", "tiled", "tiled-split"]


@pytest.mark.parametrize(("cuda_kernels", "group_channels"), GRID_VARIANTS, ids=GRID_VARIANT_IDS)
@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize(("k", "s", "groups"), CASE_GRID, ids=CASE_IDS)
def test_emulated_kernels_match_reference(
    k: int, s: int, groups: int, down: bool, cuda_kernels: str, group_channels: int, cuda_emulation
) -> None:
    features, kernels, grad_output, expected = _grid_reference(k, s, groups, down, group_channels)
    actual, launches = _emulated(cuda_emulation, features, kernels, k, s, groups, down, grad_output, cuda_kernels)
    _assert_matches(actual, expected)
    # Every kernel of the chosen set ran (these small cases always fit a tile), as plan() says.
    names, plan = _planned_launches(cuda_emulation, features, k, s, groups, down, cuda_kernels)
    assert [launch["name"] for launch in launches] == names
    assert all(name.startswith(("forward", "grad_kernels", "grad_features")) and cuda_kernels in name for name in names)
    if cuda_kernels == "tiled":
        # Upsampling by 2 or 4, a thread computes the s x s outputs of a source pixel.
        assert names[0].endswith("_cells") == (not down and s in (2, 4))
        # The kernel gradient sums over the channels: it never splits them.
        assert plan["grad_kernels"]["splits"] == 1
        if group_channels > 2:
            assert plan["forward"]["splits"] == plan["grad_features"]["splits"] == 2
            assert [launch["grid"][0] for launch in launches] == [plan[p]["blocks"] for p in ("forward", "grad_kernels", "grad_features")]


@pytest.mark.parametrize("cuda_kernels", KERNEL_SETS)
@pytest.mark.parametrize(("k", "s", "down"), [(9, 2, False), (11, 2, False), (13, 3, False), (11, 2, True), (15, 1, True)])
def test_large_kernel_sizes(k: int, s: int, down: bool, cuda_kernels: str, cuda_emulation) -> None:
    # Larger k shrinks the tiles (the weights of k*k taps per pixel share the shared-memory budget);
    # a pass whose smallest tile does not fit (the upsampling feature gradient stages k*k*s*s
    # weights per pixel) runs the simple kernel.
    features, kernels = random_case(1, 6, 5, 6, k, s, 2, down)
    grad_output = torch.randn(reassemble_reference(features, kernels, k, s, 2, down).shape, dtype=torch.float64)
    actual, launches = _emulated(cuda_emulation, features, kernels, k, s, 2, down, grad_output, cuda_kernels)
    _assert_matches(actual, _reference(features, kernels, k, s, 2, down, grad_output))
    assert [launch["name"] for launch in launches] == _planned_launches(cuda_emulation, features, k, s, 2, down, cuda_kernels)[0]
    if cuda_kernels == "tiled":
        assert launches[0]["name"].startswith("forward_tiled")
    assert all(launch["shared_bytes"] <= 48 * 1024 for launch in launches)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_tiled_falls_back_to_simple_when_no_tile_fits(down: bool, cuda_emulation) -> None:
    # One pixel's float64 weights (41*41 taps, times 2*2 sub-pixel readers in the feature gradient;
    # 79*79 taps down) plus the windows of a few channels exceed the 48 KiB shared-memory budget:
    # the dispatcher hands the call to the simple kernels.
    k, s = (41, 2) if not down else (79, 4)
    features, kernels = random_case(1, 4, 3, 4, k, s, 1, down)
    grad_output = torch.randn(reassemble_reference(features, kernels, k, s, 1, down).shape, dtype=torch.float64)
    actual, launches = _emulated(cuda_emulation, features, kernels, k, s, 1, down, grad_output, "tiled")
    _assert_matches(actual, _reference(features, kernels, k, s, 1, down, grad_output))
    assert {launch["name"] for launch in launches} == {"forward_simple", "grad_kernels_simple", "grad_features_simple"}


@pytest.mark.parametrize("cuda_kernels", KERNEL_SETS)
@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dtypes_accumulate_in_float(dtype: torch.dtype, down: bool, cuda_kernels: str, cuda_emulation) -> None:
    # 40 channels in one group: several channel chunks and a partial vector of channels.
    features, kernels = random_case(2, 40, 9, 7, 5, 2, 1, down)
    # Inputs representable in dtype, so only the kernels' own rounding is measured.
    features, kernels = features.to(dtype), kernels.to(dtype)
    grad_output = torch.randn(reassemble_reference(features.double(), kernels.double(), 5, 2, 1, down).shape).to(dtype)
    actual, _ = _emulated(cuda_emulation, features, kernels, 5, 2, 1, down, grad_output, cuda_kernels)
    expected = _reference(features, kernels, 5, 2, 1, down, grad_output)
    for got, want in zip(actual, expected):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=0, atol=float_tolerance(dtype, want))


def _layout(features: torch.Tensor, kernels: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    if layout == "channels_last":
        return features.contiguous(memory_format=torch.channels_last), kernels.contiguous(memory_format=torch.channels_last)
    if layout == "non_contiguous":
        wide = torch.randn(*features.shape[:3], 2 * features.shape[3], dtype=features.dtype)
        return wide[..., ::2], kernels.transpose(2, 3).contiguous().transpose(2, 3)
    return features[:1].expand(features.shape[0], -1, -1, -1), kernels


@pytest.mark.parametrize("cuda_kernels", KERNEL_SETS)
@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize(
    ("layout", "dtype", "channels"),
    [
        ("channels_last", torch.float32, 16),  # 16-byte vector loads of 4 channels
        ("channels_last", torch.float16, 32),  # of 8 channels
        ("channels_last", torch.float64, 12),  # of 2 channels
        ("channels_last", torch.float32, 10),  # a pixel's channels are not 16-byte aligned: scalar loads
        ("non_contiguous", torch.float64, 8),
        ("expanded_batch", torch.float64, 8),
    ],
    ids=["channels_last-f32", "channels_last-f16", "channels_last-f64", "channels_last-unaligned", "non_contiguous", "expanded_batch"],
)
def test_strided_inputs(layout: str, dtype: torch.dtype, channels: int, down: bool, cuda_kernels: str, cuda_emulation) -> None:
    features, kernels = random_case(2, channels, 9, 11, 5, 2, 2, down)
    features, kernels = _layout(features.to(dtype), kernels.to(dtype), layout)
    grad_output = torch.randn(reassemble_reference(features.double(), kernels.double(), 5, 2, 2, down).shape).to(dtype)
    if layout == "channels_last":
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
    actual, launches = _emulated(cuda_emulation, features, kernels, 5, 2, 2, down, grad_output, cuda_kernels)
    expected = _reference(features, kernels, 5, 2, 2, down, grad_output)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=float_tolerance(dtype, want))
    assert actual[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    vector_loads = sum(launch["vector_loads"] for launch in launches)
    assert [launch["name"] for launch in launches] == _planned_launches(cuda_emulation, features, 5, 2, 2, down, cuda_kernels)[0]
    tiled_ran = any("_tiled" in launch["name"] for launch in launches)  # auto: 8 channels per group or more
    assert tiled_ran == (cuda_kernels == "tiled" or (cuda_kernels == "auto" and channels // 2 >= 8))
    if tiled_ran and layout == "channels_last" and channels != 10:
        assert vector_loads > 0  # the staging took the vectorised path
    else:
        assert vector_loads == 0


@pytest.mark.parametrize("cuda_kernels", KERNEL_SETS)
@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("max_blocks", [1, 3])
def test_capped_grid_covers_every_element(max_blocks: int, down: bool, cuda_kernels: str, cuda_emulation) -> None:
    # Far more blocks are needed than the cap allows: the grid- and block-stride loops do the rest.
    height, width = (17, 23) if down else (9, 11)
    features, kernels = random_case(2, 8, height, width, 5, 2, 2, down)
    grad_output = torch.randn(reassemble_reference(features, kernels, 5, 2, 2, down).shape, dtype=torch.float64)
    actual, launches = _emulated(cuda_emulation, features, kernels, 5, 2, 2, down, grad_output, cuda_kernels, max_blocks=max_blocks)
    _assert_matches(actual, _reference(features, kernels, 5, 2, 2, down, grad_output))
    assert [launch["grid"] for launch in launches] == [(max_blocks, 1, 1)] * 3
    uncapped = _emulated(cuda_emulation, features, kernels, 5, 2, 2, down, grad_output, cuda_kernels)[1]
    assert all(launch["grid"][0] > max_blocks for launch in uncapped)


def test_default_grid_cap(cuda_emulation) -> None:
    # csrc/carafe_cuda_simple.cuh: grids of at most 2**20 blocks, legal on every CUDA GPU.
    assert cuda_emulation.max_blocks == 2**20


@pytest.mark.parametrize("cuda_kernels", KERNEL_SETS)
def test_results_do_not_depend_on_thread_order(cuda_kernels: str, cuda_emulation) -> None:
    # Threads of a block run in ascending or descending order between barriers: a kernel that
    # read what another thread writes in the same phase would differ between the two.
    for down in (False, True):
        features, kernels = random_case(2, 40, 9, 11, 5, 2, 2, down, dtype=torch.float32)
        grad_output = torch.randn(reassemble_reference(features, kernels, 5, 2, 2, down).shape)
        ascending, launches = _emulated(cuda_emulation, features, kernels, 5, 2, 2, down, grad_output, cuda_kernels)
        descending, _ = _emulated(cuda_emulation, features, kernels, 5, 2, 2, down, grad_output, cuda_kernels, order="descending")
        for a, b in zip(ascending, descending):
            assert torch.equal(a, b)
        if cuda_kernels == "tiled":
            assert all(launch["barriers"] >= 3 for launch in launches)  # staged, computed, next tile


def test_empty_batch(cuda_emulation) -> None:
    features, kernels = random_case(0, 4, 3, 3, 3, 2, 1, False)
    for cuda_kernels in KERNEL_SETS:
        (out, grad_features, grad_kernels), launches = _emulated(
            cuda_emulation, features, kernels, 3, 2, 1, False, torch.empty(0, 4, 6, 6, dtype=torch.float64), cuda_kernels
        )
        assert out.shape == (0, 4, 6, 6) and grad_features.shape == features.shape and launches == []


# The emulation itself: each promise of csrc/emulation/cuda_emulation.h, shown on a probe kernel.


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_emulation_runs_blocks_phase_by_phase(order: str, cuda_emulation) -> None:
    values = torch.arange(3 * 64, dtype=torch.float32)
    reversed_blocks = values.view(3, 64).flip(1).flatten()
    for shared in ("dynamic", "static"):
        assert torch.equal(cuda_emulation.probe_reverse(values, 64, shared, True, order), reversed_blocks)
    # Without the barrier half the threads read shared memory nobody has written yet: poison (NaN).
    unsynchronised = cuda_emulation.probe_reverse(values, 64, "dynamic", False, order)
    assert unsynchronised.isnan().sum() == 3 * 32


def test_emulation_reports_a_barrier_in_divergent_code(cuda_emulation) -> None:
    with pytest.raises(RuntimeError, match=r"32 of 64 threads wait at __syncthreads\(\) that the others never reach"):
        cuda_emulation.probe_divergent_barrier(64)


def test_emulation_reports_a_misaligned_vector_load(cuda_emulation) -> None:
    cuda_emulation.probe_vector_load(4)  # 16 bytes past an aligned address: fine
    with pytest.raises(RuntimeError, match="misaligned 16-byte vector load"):
        cuda_emulation.probe_vector_load(1)


def test_emulation_reports_a_write_outside_shared_memory(cuda_emulation) -> None:
    cuda_emulation.probe_shared_write(16, 15)
    with pytest.raises(RuntimeError, match="wrote outside its 64 bytes of dynamic shared memory"):
        cuda_emulation.probe_shared_write(16, 16)

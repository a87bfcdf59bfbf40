"""Which CUDA kernels each launch shape gets (``plan()``), and that the launches follow the plan.

``plan(features_shape, k, s, groups, down, dtype, cuda_kernels, multiprocessors)`` runs the host
code of carafe_cuda_plan.h that the CUDA launch runs, without a GPU, in both the extension and the
emulation build. Issue #22 §2: at N=2, C=256, k=5, ×2 the tiled kernels launched 40, 126 and 442
blocks for the 25×34, 50×68 and 100×136 inputs, while an H100/H200 has 132 multiprocessors, and the
feature gradient left half its 256 threads idle. The shapes below pin what the plan does instead.
"""

from __future__ import annotations

import pytest
import torch

from carafe_exp.ops import reassemble_reference
from ops.op_cases import random_case

H200 = 132  # multiprocessors of an H100/H200
PASSES = ("forward", "grad_kernels", "grad_features")


def _plan(emulation, shape, *, k=5, s=2, groups=1, down=False, dtype="float32", kernels="auto", multiprocessors=H200):
    return emulation.plan(list(shape), k, s, groups, down, dtype, kernels, multiprocessors)


@pytest.mark.parametrize(("height", "width", "unshaped_blocks"), [(25, 34, 40), (50, 68, 126), (100, 136, 442)])
def test_fpn_steps_fill_a_large_gpu(height: int, width: int, unshaped_blocks: int, cuda_emulation) -> None:
    shape = (2, 256, height, width)
    # multiprocessors=0: no shaping, the tiles alone (the block counts the issue measured).
    unshaped = _plan(cuda_emulation, shape, multiprocessors=0)
    assert unshaped["forward"]["blocks"] == unshaped_blocks and unshaped["forward"]["splits"] == 1
    plan = _plan(cuda_emulation, shape)
    assert all(plan[name]["kernels"] == "tiled" for name in PASSES)
    for name in ("forward", "grad_features"):
        entry = plan[name]
        # Channels split across blocks until there are 2 blocks per multiprocessor (or slices of
        # 16 channels); never on a map that already has enough tiles.
        assert entry["blocks"] >= 2 * H200
        assert entry["splits"] == (1 if unshaped_blocks >= 2 * H200 else -(-2 * H200 // unshaped_blocks))
        assert entry["slice"] * entry["splits"] >= 256 and entry["slice"] % 4 == 0
    # The forward computes the 2x2 outputs of a source pixel per thread.
    assert plan["forward"]["cell"] == 2
    # The upsampling feature gradient stages k*k*s*s weights per pixel: an 8x8 tile leaves room for
    # 8 channels a round, 64 pixels x 2 vectors of 4 channels = 128 work items: 128 threads, not 256.
    assert plan["grad_features"]["tile"] == (8, 8) and plan["grad_features"]["chunk"] == 8
    assert plan["grad_features"]["threads"] == 128
    # The kernel gradient sums over the channels and cannot split them: smaller tiles instead.
    assert plan["grad_kernels"]["splits"] == 1
    assert plan["grad_kernels"]["blocks"] >= unshaped["grad_kernels"]["blocks"]


def test_carafe_plus_plus_downsampling_has_enough_tiles(cuda_emulation) -> None:
    plan = _plan(cuda_emulation, (2, 64, 400, 668), down=True)
    assert all(plan[name]["kernels"] == "tiled" and plan[name]["splits"] == 1 for name in PASSES)
    assert min(plan[name]["blocks"] for name in PASSES) >= 2 * H200
    assert plan["forward"]["cell"] == 1  # cells only upsampling


@pytest.mark.parametrize(
    ("shape", "groups", "k", "s", "expected"),
    [
        ((2, 256, 25, 34), 1, 5, 2, "tiled"),
        ((1, 8, 5, 5), 1, 5, 2, "tiled"),  # 8 channels per group: two vectors of 4
        ((1, 4, 5, 5), 1, 5, 2, "simple"),  # too few channels to reuse the staged weights
        ((1, 16, 5, 5), 4, 5, 2, "simple"),  # 4 per group
        ((1, 64, 5, 5), 4, 3, 4, "tiled"),
    ],
)
def test_auto_picks_per_shape(shape, groups: int, k: int, s: int, expected: str, cuda_emulation) -> None:
    plan = _plan(cuda_emulation, shape, k=k, s=s, groups=groups)
    assert [plan[name]["kernels"] for name in PASSES] == [expected] * 3
    # The forced sets ignore the shape (as far as a tile fits).
    assert {_plan(cuda_emulation, shape, k=k, s=s, groups=groups, kernels="tiled")[name]["kernels"] for name in PASSES} == {"tiled"}
    assert {_plan(cuda_emulation, shape, k=k, s=s, groups=groups, kernels="simple")[name]["kernels"] for name in PASSES} == {"simple"}


def test_auto_takes_the_simple_kernels_where_no_tile_fits(cuda_emulation) -> None:
    # k=41 upsampling: one input pixel's feature-gradient weights (41*41 taps x 2*2 readers) and the
    # window of outputs of one vector of channels exceed the 48 KiB of shared memory; the forward
    # (one output pixel's 41*41 weights and four channels of its 41x41 window) still tiles.
    plan = _plan(cuda_emulation, (1, 32, 3, 4), k=41)
    assert plan["grad_features"]["kernels"] == "simple" and plan["grad_features"]["shared_bytes"] == 0
    assert plan["forward"]["kernels"] == "tiled"


def test_half_types_plan_with_float_accumulators(cuda_emulation) -> None:
    # Half types are staged and accumulated in float: the same plan as float32.
    assert _plan(cuda_emulation, (2, 256, 25, 34), dtype="bfloat16") == _plan(cuda_emulation, (2, 256, 25, 34))
    assert _plan(cuda_emulation, (2, 256, 25, 34), dtype="float16") == _plan(cuda_emulation, (2, 256, 25, 34))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_launches_follow_the_plan(down: bool, dtype: torch.dtype, cuda_emulation) -> None:
    # A scaled-down FPN step (64 channels, few tiles) on a GPU of 16 multiprocessors: split, cells
    # and fewer threads all at once, and the emulated launches are exactly what plan() reported.
    features, kernels = random_case(1, 64, 7, 9, 5, 2, 1, down)
    features, kernels = features.to(dtype), kernels.to(dtype)
    plan = _plan(cuda_emulation, features.shape, down=down, dtype=str(dtype).removeprefix("torch."), multiprocessors=16)
    assert plan["forward"]["splits"] > 1
    expected = reassemble_reference(features.double(), kernels.double(), 5, 2, 1, down)
    grad_output = torch.randn(expected.shape).to(dtype)
    cuda_emulation.clear_launches()
    out = cuda_emulation.forward(features, kernels, 5, 2, 1, down, False, "auto", cuda_emulation.max_blocks, "ascending", 16)
    cuda_emulation.backward(grad_output, features, kernels, 5, 2, 1, down, False, False, "auto", cuda_emulation.max_blocks, "ascending", 16)
    launches = cuda_emulation.launches()
    for launch, name in zip(launches, PASSES, strict=True):
        entry = plan[name]
        assert launch["name"].startswith(f"{name}_tiled")
        assert launch["grid"] == (entry["blocks"], 1, 1) and launch["block"] == (entry["threads"], 1, 1)
        assert launch["shared_bytes"] == entry["shared_bytes"]
    tolerance = 2 * torch.finfo(dtype).eps * expected.abs().max().item() if dtype != torch.float32 else 1e-5
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tolerance)


def test_extension_and_emulation_plan_alike(compiled_extension, cuda_emulation) -> None:
    # The extension answers without a GPU or a CUDA build, from the same header.
    for shape, down in (((2, 256, 25, 34), False), ((2, 64, 400, 668), True), ((1, 4, 5, 5), False)):
        for kernels in ("auto", "tiled", "simple"):
            args = (list(shape), 5, 2, 1, down, "float32", kernels, H200)
            assert compiled_extension.plan(*args) == cuda_emulation.plan(*args)

"""Reassembly regions follow the operator's geometry (DESIGN.md) and chains of softmax kernels keep weight 1."""

from __future__ import annotations

import pytest
import torch

from carafe_exp.analysis.reassembly_kernels import CapturedKernels, accumulate, capture_kernels
from carafe_exp.resample import build_downsampler, build_upsampler


def test_captured_kernels_are_the_ones_the_op_applies() -> None:
    torch.manual_seed(0)
    up = build_upsampler({"name": "carafe", "k_up": 5, "c_m": 8}, 16, 2).eval()
    x = torch.randn(1, 16, 6, 7)
    captured = capture_kernels(up, lambda: up(x))
    assert len(captured) == 1
    item = captured[0]
    assert (item.direction, item.scale, item.kernel_size, item.input_size, item.output_size) == ("up", 2, 5, (6, 7),
                                                                                             (12, 14))
    # Reassembling x with the captured kernels by hand gives the module's output at (y, x).
    out = up(x)
    for y, xx in ((0, 0), (5, 9), (11, 13)):
        region = item.region(y, xx)
        expected = sum(w * x[0, :, sy, sx] for (sy, sx), w in region.items())
        assert torch.allclose(out[0, :, y, xx], expected, atol=1e-5)
    # Output (5, 9) reads the 5x5 neighbourhood of input (2, 4) (source = floor(y/s), floor(x/s)).
    assert set(item.region(5, 9)) == {(2 + dy, 4 + dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_downsampling_region_is_centred_on_s_times_the_output() -> None:
    torch.manual_seed(0)
    down = build_downsampler({"name": "carafe", "k_down": 3}, 8, 2).eval()
    x = torch.randn(1, 8, 9, 9)
    item = capture_kernels(down, lambda: down(x))[0]
    assert item.direction == "down" and item.output_size == (5, 5)
    assert set(item.region(2, 3)) == {(4 + dy, 6 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    out = down(x)
    expected = sum(w * x[0, :, sy, sx] for (sy, sx), w in item.region(2, 3).items())
    assert torch.allclose(out[0, :, 2, 3], expected, atol=1e-5)


def _uniform(size: tuple[int, int], k: int) -> CapturedKernels:
    h, w = size
    return CapturedKernels("fpn.upsamplers.x", "up", 2, k, 1, size, torch.full((k * k, 2 * h, 2 * w), 1.0 / (k * k)))


def test_accumulated_region_of_a_chain() -> None:
    # Three x2 steps 4x4 -> 8x8 -> 16x16 -> 32x32 (coarsest first) with box kernels of 3x3.
    chain = [_uniform((4, 4), 3), _uniform((8, 8), 3), _uniform((16, 16), 3)]
    regions = accumulate(chain, 17, 15)
    assert len(regions) == 3
    # Softmax kernels sum to 1, so an interior location passes weight 1 to every coarser level.
    for region in regions:
        assert sum(region.values()) == pytest.approx(1.0)
    # Finest: output (17, 15) reads the 3x3 around (8, 7): rows 7-9, columns 6-8 of the 16x16 map.
    assert set(regions[0]) == {(8 + dy, 7 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    # Those rows 7-9 read sources 3, 4, 4 of the 8x8 map, each with reach 1: rows 2-5 (columns alike).
    assert sorted({y for y, _ in regions[1]}) == [2, 3, 4, 5]
    assert sorted({x for _, x in regions[1]}) == [2, 3, 4, 5]
    assert max(regions[2].values()) > min(regions[2].values()) > 0


@pytest.mark.parametrize("size", ["0", "-3", "big"])
def test_visualize_refuses_a_size_that_is_not_positive(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--size 0`` fed a 1x1 image to the network and drew a picture of nothing."""
    from carafe_exp.analysis.visualize import main as visualize_main

    with pytest.raises(SystemExit) as exited:
        visualize_main(["run", "image.jpg", "--size", size])
    assert exited.value.code == 2
    assert "--size: a size is a whole number of pixels >= 1" in capsys.readouterr().err

"""CARAFE / CARAFE++ resamplers: predictor + reassembly, the initial box filter, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp import ops
from carafe_exp.resample import build_downsampler, build_upsampler


def unfold_carafe_up(x: torch.Tensor, kernels: torch.Tensor, k: int, s: int, groups: int = 1) -> torch.Tensor:
    """CARAFE upsampling written independently of carafe_exp.ops: unfold each k×k neighbourhood of (y//s, x//s)."""
    n, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).view(n, groups, c // groups, k * k, h, w)
    cols = cols.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
    weights = kernels.view(n, groups, 1, k * k, s * h, s * w)
    return (cols * weights).sum(dim=3).view(n, c, s * h, s * w)


def unfold_carafe_down(x: torch.Tensor, kernels: torch.Tensor, k: int, s: int, groups: int = 1) -> torch.Tensor:
    """CARAFE++ downsampling written independently of carafe_exp.ops: the k×k neighbourhood of (s·y, s·x)."""
    n, c, h, w = x.shape
    out_h, out_w = -(-h // s), -(-w // s)
    cols = F.unfold(x, k, padding=k // 2, stride=s).view(n, groups, c // groups, k * k, out_h, out_w)
    weights = kernels.view(n, groups, 1, k * k, out_h, out_w)
    return (cols * weights).sum(dim=3).view(n, c, out_h, out_w)


def _sharpen(module: nn.Module) -> None:
    nn.init.normal_(module.kernel_predictor.encoder.weight, std=0.5)


@pytest.mark.parametrize(("groups", "normalizer"), [(1, "softmax"), (2, "sigmoid")])
def test_upsampler_equals_kernel_predictor_plus_reference_op(groups: int, normalizer: str) -> None:
    module = build_upsampler("carafe", 8, 2, k_up=3, c_m=4, groups=groups, normalizer=normalizer)
    _sharpen(module)
    x = torch.randn(2, 8, 5, 7)
    kernels = module.kernel_predictor(x)
    expected = ops.carafe(x, kernels, 3, 2, groups=groups, backend="reference")
    torch.testing.assert_close(module(x), expected)
    torch.testing.assert_close(module(x), unfold_carafe_up(x, kernels, 3, 2, groups))


@pytest.mark.parametrize(("groups", "scale"), [(1, 2), (4, 3)])
def test_downsampler_equals_kernel_predictor_plus_reference_op(groups: int, scale: int) -> None:
    module = build_downsampler("carafe", 8, scale, groups=groups).eval()
    _sharpen(module)
    x = torch.randn(2, 8, 7, 9)
    kernels = module.kernel_predictor(x)
    expected = ops.carafe_down(x, kernels, 5, scale, groups=groups, backend="reference")
    torch.testing.assert_close(module(x), expected)
    torch.testing.assert_close(module(x), unfold_carafe_down(x, kernels, 5, scale, groups))


def _assert_close_to_box(out: torch.Tensor, box: torch.Tensor) -> None:
    # Logits of std ~0.02 perturb each tap by ~2%: tiny on average, a few hundredths at worst. Wrong border
    # handling (e.g. renormalising over valid taps) or a shifted window would be off by tenths.
    error = (out - box).abs()
    assert error.mean() < 0.01 and error.max() < 0.06, (error.mean().item(), error.max().item())


@pytest.mark.parametrize(("k_up", "scale"), [(5, 2), (3, 4)])
def test_fresh_upsampler_is_a_box_filter_of_the_nearest_upsampled_input(k_up: int, scale: int) -> None:
    # mmcv's N(0, 0.001) encoder makes softmax kernels nearly uniform: a k×k mean (zeros outside) around ⌊y/s⌋.
    module = build_upsampler("carafe", 32, scale, k_up=k_up)
    x = torch.randn(1, 32, 6, 5)
    box = F.avg_pool2d(x, k_up, stride=1, padding=k_up // 2, count_include_pad=True)
    expected = F.interpolate(box, scale_factor=scale, mode="nearest")
    out = module(x)
    _assert_close_to_box(out, expected)
    assert (out - F.interpolate(x, scale_factor=scale, mode="nearest")).abs().max() > 0.5


def test_fresh_downsampler_is_a_box_filter_at_the_strided_sources() -> None:
    module = build_downsampler("carafe", 32, 2)
    x = torch.randn(2, 32, 9, 8)
    expected = F.avg_pool2d(x, 5, stride=2, padding=2, count_include_pad=True)
    _assert_close_to_box(module(x), expected)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("channels", "scale", "k_up", "k_enc", "c_m", "groups"),
                         [(256, 2, 5, 3, 64, 1), (64, 4, 3, 5, None, 2), (32, 2, 7, 1, 16, 4)])
def test_upsampler_parameter_count_matches_closed_form(channels, scale, k_up, k_enc, c_m, groups) -> None:
    module = build_upsampler("carafe", channels, scale, k_up=k_up, k_encoder=k_enc, c_m=c_m, groups=groups)
    compressor = 0 if c_m is None else (channels + 1) * c_m
    encoder = ((c_m or channels) * k_enc**2 + 1) * groups * k_up**2 * scale**2
    assert _params(module) == compressor + encoder
    if (channels, scale, k_up, k_enc, c_m) == (256, 2, 5, 3, 64):
        assert _params(module) == 74_148  # CARAFE Table 2: 74k


@pytest.mark.parametrize("compressor_norm", [True, False])
def test_downsampler_parameter_count_matches_closed_form(compressor_norm: bool) -> None:
    channels, c_m, k_down, k_enc = 256, 16, 5, 3
    module = build_downsampler("carafe", channels, 2, compressor_norm=compressor_norm)
    # With BN the compressor drops its bias and BN adds a scale and a shift per channel.
    compressor = channels * c_m + (2 * c_m if compressor_norm else c_m)
    assert _params(module) == compressor + (c_m * k_enc**2 + 1) * k_down**2


@pytest.mark.parametrize("build", [build_upsampler, build_downsampler], ids=["up", "down"])
def test_unknown_backend_is_a_config_error_when_built(build) -> None:
    """A bad ``backend`` key fails when the model is built, not at the first forward inside a training step."""
    from carafe_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="backend.*'fast'.*'auto', 'compiled', 'reference'"):
        build({"name": "carafe", "backend": "fast"}, 8, 2)
    assert build({"name": "carafe", "backend": "reference"}, 8, 2).backend == "reference"

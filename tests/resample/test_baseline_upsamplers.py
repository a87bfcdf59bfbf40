"""Table 2's baselines and DySample: closed-form parameter counts and what each computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample import build_upsampler
from carafe_exp.resample.learned_upsample import transposed_conv_padding


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _bilinear(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("channels", [256, 24])
@pytest.mark.parametrize("scale", [2, 4])
def test_parameter_counts_match_closed_forms(channels: int, scale: int) -> None:
    c, s = channels, scale
    expected = {
        "nearest": 0,
        "bilinear": 0,
        "nearest_conv": 9 * c * c + c,
        "bilinear_conv": 9 * c * c + c,
        "deconv": 9 * c * c + c,
        "pixel_shuffle": 9 * c * c * s * s + c * s * s,
        "gum": 2 * (c * c + c) + 2 * c + 2,
        "spatial_attention": 9 * c + 1,
        "dysample": (c + 1) * 2 * 4 * s * s,
    }
    for name, count in expected.items():
        assert _params(build_upsampler(name, c, s)) == count, name
    assert _params(build_upsampler("dysample", c, s, dyscope=True)) == (2 * c + 1) * 2 * 4 * s * s
    assert _params(build_upsampler("dysample", c, 2, style="pl")) == (c // 4 + 1) * 2 * 4


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_deconv_padding_gives_exactly_scaled_output(kernel_size: int, scale: int) -> None:
    if scale == 1 and kernel_size % 2 == 0:
        with pytest.raises(ValueError, match="kernel_size"):
            transposed_conv_padding(kernel_size, scale)
        return
    padding, output_padding = transposed_conv_padding(kernel_size, scale)
    assert padding >= 0 and 0 <= output_padding < scale  # ConvTranspose2d needs output_padding < stride
    for height in (1, 4, 7):
        assert (height - 1) * scale - 2 * padding + kernel_size + output_padding == scale * height
    assert transposed_conv_padding(3, 2) == (1, 1)  # mmdetection FPN_CARAFE's deconv
    assert transposed_conv_padding(2, 2) == (0, 0)  # Mask R-CNN's mask-head deconv


def test_fresh_gum_is_bilinear_upsampling() -> None:
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(build_upsampler("gum", 8, 2)(x), _bilinear(x, 2))
    torch.testing.assert_close(build_upsampler("gum", 8, 3)(x), _bilinear(x, 3))


def test_gum_offsets_move_the_sampling_position_in_output_pixels() -> None:
    # An x-offset of s output pixels samples one input pixel to the right: out[..., X] = bilinear[..., X + s].
    scale = 2
    module = build_upsampler("gum", 4, scale)
    with torch.no_grad():
        module.guidance[-1].bias.copy_(torch.tensor([float(scale), 0.0]))
    x = torch.randn(1, 4, 6, 8)
    out, reference = module(x), _bilinear(x, scale)
    width = out.shape[-1]
    torch.testing.assert_close(out[..., scale:width - 2 * scale], reference[..., 2 * scale:width - scale])
    assert not torch.allclose(out, reference)


def test_dysample_with_zero_offsets_is_bilinear_upsampling() -> None:
    x = torch.randn(2, 8, 5, 7)
    for params in ({}, {"style": "pl", "groups": 2}, {"dyscope": True}):
        module = build_upsampler("dysample", 8, 2, **params)
        nn.init.zeros_(module.offset.weight)
        torch.testing.assert_close(module(x), _bilinear(x, 2))
    fresh = build_upsampler("dysample", 8, 2)  # N(0, 0.001) offsets: bilinear up to tiny shifts
    torch.testing.assert_close(fresh(x), _bilinear(x, 2), atol=0.02, rtol=0)


def test_dysample_offset_layout_is_xy_then_group_then_subpixel() -> None:
    # Shift group 1's x-offsets by one input pixel (bias 4 × scope 0.25) and leave group 0 alone.
    scale, groups, channels = 2, 2, 4
    module = build_upsampler("dysample", channels, scale, groups=groups)
    nn.init.zeros_(module.offset.weight)
    bias = torch.zeros(2, groups, scale * scale)
    bias[0, 1] = 4.0
    with torch.no_grad():
        module.offset.bias.copy_(bias.flatten())
    x = torch.randn(1, channels, 6, 8)
    out, reference = module(x), _bilinear(x, scale)
    torch.testing.assert_close(out[:, :2], reference[:, :2])  # group 0: channels 0-1
    torch.testing.assert_close(out[:, 2:, :, 2:12], reference[:, 2:, :, 4:14])  # group 1, interior columns


def test_spatial_attention_rescales_the_bilinear_upsampled_map() -> None:
    module = build_upsampler("spatial_attention", 8, 2)
    nn.init.zeros_(module.attention.weight)
    nn.init.constant_(module.attention.bias, 1.5)
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(module(x), _bilinear(x, 2) * torch.sigmoid(torch.tensor(1.5)))


def test_conv_upsamplers_apply_their_conv_at_the_output_resolution() -> None:
    x = torch.randn(1, 6, 4, 5)
    nearest_conv = build_upsampler("nearest_conv", 6, 2)
    torch.testing.assert_close(nearest_conv(x), nearest_conv.conv(F.interpolate(x, scale_factor=2)))
    bilinear_conv = build_upsampler("bilinear_conv", 6, 2)
    torch.testing.assert_close(bilinear_conv(x), bilinear_conv.conv(_bilinear(x, 2)))
    shuffle = build_upsampler("pixel_shuffle", 6, 2)
    torch.testing.assert_close(shuffle(x), F.pixel_shuffle(shuffle.conv(x), 2))


@pytest.mark.parametrize("name", ["gum", "dysample"])
def test_sampling_positions_keep_full_precision_under_bfloat16(name: str) -> None:
    # bf16 coordinates would snap positions on a 96-pixel-wide output to whole pixels or worse.
    module = build_upsampler(name, 8, 2)
    with torch.no_grad():
        last = module.guidance[-1] if name == "gum" else module.offset
        last.bias.fill_(0.3)  # a sub-pixel shift everywhere
    x = torch.randn(1, 8, 6, 48)
    reference = module(x)
    half = module.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert (half - reference).abs().mean() < 0.02

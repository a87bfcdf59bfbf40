"""Every registered resampler honours the size contract and back-propagates finite gradients."""

from __future__ import annotations

import pytest
import torch

from carafe_exp.errors import ConfigError
from carafe_exp.resample import DOWNSAMPLERS, UPSAMPLERS, build_downsampler, build_upsampler
from carafe_exp.resample.guided import requires_guide

CHANNELS = 16
GUIDED_CHANNELS = 32  # A2U's GroupNorm(32) needs a multiple of 32
ODD_SIZES = [(5, 7), (3, 1)]

# Non-default settings that exercise other code paths of the same resampler.
# Guided upsamplers (FADE, SAPA, FreqFusion) are ×2 with a guide only: tests/resample/test_guided_upsamplers.py.
GUIDED = sorted(name for name, cls in UPSAMPLERS.items() if requires_guide(cls))
UPSAMPLER_VARIANTS = [(name, {}) for name in sorted(UPSAMPLERS) if name not in GUIDED] + [
    ("carafe", {"groups": 2, "normalizer": "sigmoid", "k_up": 3, "k_encoder": 1}),
    ("carafe", {"c_m": None, "normalizer": "sigmoid_norm"}),
    ("carafe", {"compressor_norm": True, "k_up": 7}),
    ("dysample", {"dyscope": True}),
    ("dysample", {"style": "pl", "groups": 2}),
    ("deconv", {"kernel_size": 2}),
    ("deconv", {"kernel_size": 4}),
]
DOWNSAMPLER_VARIANTS = [(name, {}) for name in sorted(DOWNSAMPLERS)] + [
    ("carafe", {"groups": 4, "compressor_norm": False, "normalizer": "sigmoid_norm"}),
    ("carafe", {"c_m": None, "k_down": 3}),
    ("lip", {"logit_net": "bottleneck", "bottleneck_width": 8}),
]
# DySample with style 'pl' needs channels divisible by s²; InstanceNorm (LIP) needs more than one pixel.


def _variant_id(variant: tuple[str, dict]) -> str:
    name, params = variant
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def _check_gradients(module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(parameter.grad).all(), f"non-finite gradient in {name}"


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("variant", UPSAMPLER_VARIANTS, ids=_variant_id)
def test_upsampler_returns_scaled_size_and_finite_gradients(variant: tuple[str, dict], scale: int) -> None:
    name, params = variant
    module = build_upsampler(name, CHANNELS, scale, **params)
    for height, width in ODD_SIZES:
        x = torch.randn(2, CHANNELS, height, width, requires_grad=True)
        module.zero_grad()
        out = module(x)
        assert out.shape == (2, CHANNELS, scale * height, scale * width)
        assert torch.isfinite(out).all()
        _check_gradients(module, x, out)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("variant", DOWNSAMPLER_VARIANTS, ids=_variant_id)
def test_downsampler_returns_ceil_size_and_finite_gradients(variant: tuple[str, dict], scale: int) -> None:
    name, params = variant
    module = build_downsampler(name, CHANNELS, scale, **params)
    for height, width in [(7, 9), (5, 2)]:
        x = torch.randn(2, CHANNELS, height, width, requires_grad=True)
        module.zero_grad()
        out = module(x)
        assert out.shape == (2, CHANNELS, -(-height // scale), -(-width // scale))
        assert torch.isfinite(out).all()
        _check_gradients(module, x, out)


def test_scale_one_is_identity_sized() -> None:
    x = torch.randn(1, CHANNELS, 5, 6)
    for name in UPSAMPLERS:
        if name not in GUIDED:
            assert build_upsampler(name, CHANNELS, 1)(x).shape == x.shape, name
    for name in DOWNSAMPLERS:
        assert build_downsampler(name, CHANNELS, 1)(x).shape == x.shape, name


def test_builders_reject_unknown_names_and_parameters() -> None:
    with pytest.raises(ValueError, match="unknown upsampler 'bicubic'"):
        build_upsampler("bicubic", CHANNELS, 2)
    with pytest.raises(ValueError, match="k_dwn"):
        build_downsampler({"name": "carafe", "k_dwn": 5}, CHANNELS, 2)
    with pytest.raises(ValueError, match="k_up"):
        build_upsampler("carafe", CHANNELS, 2, k_up=4)
    with pytest.raises(ValueError, match="normalizer"):
        build_upsampler("carafe", CHANNELS, 2, normalizer="tanh")
    with pytest.raises(ValueError, match="groups"):
        build_upsampler("carafe", CHANNELS, 2, groups=3)
    with pytest.raises(ValueError, match="groups"):
        build_upsampler("dysample", 6, 2)
    with pytest.raises(ValueError, match="logit_net"):
        build_downsampler("lip", CHANNELS, 2, logit_net="deep")


@pytest.mark.parametrize("name", ["conv", "maxpool", "avgpool", "dpp", "lip"])
def test_an_even_pooling_window_names_the_command_line_key(name: str) -> None:
    """Every downsampler with a window says ``downsampler.kernel_size=<value>`` as the command line writes it."""
    with pytest.raises(ConfigError, match=f"^downsampler.kernel_size=2 is not valid for downsampler={name}: it must "
                                          f"be an odd int >= 1$"):
        build_downsampler({"name": name, "kernel_size": 2}, CHANNELS, 2)


def test_overrides_take_precedence_over_the_config() -> None:
    module = build_upsampler({"name": "carafe", "k_up": 5, "c_m": 8}, CHANNELS, 2, k_up=3)
    assert module.kernel_size == 3
    assert module.kernel_predictor.encoder.in_channels == 8


@pytest.mark.parametrize("name", sorted(DOWNSAMPLERS))
def test_downsamplers_fit_the_resnet_backbone_sites(name: str) -> None:
    # The classification backbone builds them for the stem max-pool (64 channels) and for the input of
    # layer2–4's first bottleneck (256, 512, 1024 channels), always ÷2, in train and eval mode.
    for channels, size in ((64, 56), (1024, 7)):
        module = build_downsampler(name, channels, 2)
        x = torch.randn(2, channels, size, size)
        for training in (True, False):
            module.train(training)
            out = module(x)
            assert out.shape == (2, channels, -(-size // 2), -(-size // 2))
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", GUIDED)
def test_guided_upsampler_returns_doubled_size_and_finite_gradients(name: str) -> None:
    module = build_upsampler(name, GUIDED_CHANNELS, 2, guide_available=True)
    for height, width in ODD_SIZES:
        x = torch.randn(2, GUIDED_CHANNELS, height, width, requires_grad=True)
        guide = torch.randn(2, GUIDED_CHANNELS, 2 * height, 2 * width)
        module.zero_grad()
        out = module(x, guide=guide)
        assert out.shape == (2, GUIDED_CHANNELS, 2 * height, 2 * width)
        assert torch.isfinite(out).all()
        _check_gradients(module, x, out)

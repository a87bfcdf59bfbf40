"""The Global&Local generator and its Partial Conv variant: layers, sites, mask propagation, forward+backward.

Layer table from the CARAFE supplement §1 / mmagic gl_{encoder,dilation,decoder}.py (spec §2.1).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from carafe_exp.models.global_local import (
    ConvBlock,
    StridedSite,
    UpsampleSite,
    _carry_mask,
    build_global_local,
    build_partial_conv,
)
from carafe_exp.errors import ConfigError
from carafe_exp.models.partial_conv import PartialConv2d
from carafe_exp.resample.carafe import CarafeDownsample, CarafeUpsample

DECONV = {"name": "deconv", "kernel_size": 3}
CONV = {"name": "conv", "kernel_size": 3, "bias": True}
CARAFE_UP = {"name": "carafe", "k_up": 5, "k_encoder": 3, "c_m": 64, "normalizer": "softmax", "groups": 1,
             "compressor_norm": False}
CARAFE_DOWN = {"name": "carafe", "k_down": 5, "k_encoder": 3, "c_m": 16, "normalizer": "softmax", "groups": 1,
               "compressor_norm": True}

# (kind, in, out, kernel, stride, dilation) of the original network, input to output.
GL_LAYERS = [
    ("conv", 4, 64, 5, 1, 1), ("conv", 64, 128, 3, 2, 1), ("conv", 128, 128, 3, 1, 1),
    ("conv", 128, 256, 3, 2, 1), ("conv", 256, 256, 3, 1, 1), ("conv", 256, 256, 3, 1, 1),
    ("conv", 256, 256, 3, 1, 2), ("conv", 256, 256, 3, 1, 4), ("conv", 256, 256, 3, 1, 8), ("conv", 256, 256, 3, 1, 16),
    ("conv", 256, 256, 3, 1, 1), ("conv", 256, 256, 3, 1, 1),
    ("deconv", 256, 128, 4, 2, 1), ("conv", 128, 128, 3, 1, 1),
    ("deconv", 128, 64, 4, 2, 1), ("conv", 64, 32, 3, 1, 1),
    ("conv", 32, 3, 3, 1, 1),
]


def _layers(model: nn.Module) -> list[tuple[str, int, int, int, int, int]]:
    found = []
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            found.append(("deconv", module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                          module.dilation[0]))
        elif type(module) in (nn.Conv2d, PartialConv2d):
            found.append(("conv", module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                          module.dilation[0]))
    return found


@pytest.mark.parametrize("build", [build_global_local, build_partial_conv])
def test_original_network_layer_by_layer(build) -> None:
    model = build(DECONV, CONV, {"decoder": True, "encoder": True})  # conv = the original strided convs
    assert _layers(model) == GL_LAYERS
    # Every layer but the last has BN (no conv bias) + ReLU: parameters = Σ k²·in·out + 2·out, last + bias.
    expected = sum(k * k * cin * cout + 2 * cout for _, cin, cout, k, _, _ in GL_LAYERS[:-1]) + 32 * 3 * 9 + 3
    assert sum(p.numel() for p in model.parameters()) == expected == 6_069_155


def test_carafe_keeps_channels_so_the_next_conv_takes_c_in() -> None:
    model = build_global_local(CARAFE_UP, CONV, {"decoder": True})
    ups = [m for m in model.modules() if isinstance(m, UpsampleSite)]
    assert [type(u.upsample) for u in ups] == [CarafeUpsample, CarafeUpsample]
    convs = [(cin, cout) for kind, cin, cout, *_ in _layers(model) if kind == "conv"]
    assert (256, 128) in convs and (128, 32) in convs  # the convs after the two CARAFE steps
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    # decoder site off: the original deconvs whatever the upsampler.
    assert _layers(build_global_local(CARAFE_UP, CONV, {"decoder": False})) == GL_LAYERS


def test_encoder_site_puts_the_downsampler_before_stride_one_convs() -> None:
    model = build_global_local(DECONV, CARAFE_DOWN, {"encoder": True})
    sites = [m for m in model.modules() if isinstance(m, StridedSite)]
    assert len(sites) == 2
    for site, (cin, cout) in zip(sites, [(64, 128), (128, 256)]):
        assert isinstance(site.downsample, CarafeDownsample)
        conv = site.block.conv
        assert (conv.in_channels, conv.out_channels, conv.stride) == (cin, cout, (1, 1))
    # encoder site off (the default): strided convs, no downsampler.
    default = build_global_local(DECONV, CARAFE_DOWN)
    assert all(s.downsample is None and s.block.conv.stride == (2, 2) for s in default.modules()
               if isinstance(s, StridedSite))


# Every site on/off with CARAFE / CARAFE++, and the original network (deconv, strided conv).
CASES = [(CARAFE_UP, CARAFE_DOWN, {"decoder": decoder, "encoder": encoder})
         for decoder in (True, False) for encoder in (True, False)]
CASES.append((DECONV, CONV, {"decoder": True, "encoder": True}))
CASE_IDS = [f"{u['name']}-{d['name']}-dec{int(s['decoder'])}-enc{int(s['encoder'])}" for u, d, s in CASES]


@pytest.mark.parametrize("build", [build_global_local, build_partial_conv])
@pytest.mark.parametrize("up,down,sites", CASES, ids=CASE_IDS)
def test_forward_backward_every_variant(build, up, down, sites) -> None:
    torch.manual_seed(0)
    model = build(up, down, sites)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    hole = torch.zeros(2, 1, 16, 16)
    hole[:, :, 4:10, 5:12] = 1
    out = model(image, hole)
    assert out.shape == (2, 3, 16, 16)
    assert out.min() >= -1 and out.max() <= 1
    out.square().mean().backward()
    params = [(name, p) for name, p in model.named_parameters()]
    missing = [name for name, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    # Every resampler module takes part in the backward pass.
    dead = [name for name, p in params if ("upsample" in name or "downsample" in name) and p.grad.abs().sum() == 0]
    assert not dead, dead


@pytest.mark.parametrize("build", [build_global_local, build_partial_conv])
def test_the_hole_content_never_reaches_the_output(build) -> None:
    torch.manual_seed(1)
    model = build(CARAFE_UP, CARAFE_DOWN, {"decoder": True, "encoder": True}).eval()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    hole = torch.zeros(1, 1, 16, 16)
    hole[..., 3:9, 2:10] = 1
    other = image.clone()
    other[..., 3:9, 2:10] = torch.rand(1, 3, 6, 8)
    with torch.no_grad():
        assert torch.equal(model(image, hole), model(other, hole))


def test_odd_sizes_are_refused_with_the_shape() -> None:
    with pytest.raises(ValueError, match=r"divisible by 4, got \(18, 16\)"):
        build_global_local(DECONV, CONV)(torch.zeros(1, 3, 18, 16), torch.zeros(1, 1, 18, 16))


# ------------------------------------------------------------------ the mask through resamplers
def test_mask_through_the_original_deconv_is_nearest() -> None:
    site = UpsampleSite(8, 4, DECONV, "soft")
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    _, carried = site(torch.randn(1, 8, 2, 2), mask)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(carried[0, 0], expected)


def _hand_reassemble(mask: torch.Tensor, kernels: torch.Tensor, k: int, source) -> torch.Tensor:
    """out[y, x] = Σ_taps K[tap, y, x] · M[source(y, x) + offset], zeros outside (DESIGN's op definition)."""
    r = k // 2
    height, width = kernels.shape[-2:]
    out = torch.zeros(height, width, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            sy, sx = source(y, x)
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = sy + dy, sx + dx
                    if 0 <= yy < mask.shape[-2] and 0 <= xx < mask.shape[-1]:
                        out[y, x] += kernels[0, (dy + r) * k + dx + r, y, x].double() * mask[0, 0, yy, xx].double()
    return out


@pytest.mark.parametrize("update", ["soft", "binary"])
def test_mask_through_carafe_up_uses_its_kernels(update: str) -> None:
    torch.manual_seed(2)
    up = CarafeUpsample(8, 2, k_up=3, c_m=4, backend="reference")
    torch.nn.init.normal_(up.kernel_predictor.encoder.weight, std=1.0)  # far from uniform kernels
    x = torch.randn(1, 8, 4, 5)
    mask = torch.ones(1, 1, 4, 5)
    mask[..., 1:3, 1:4] = 0
    kernels = up.kernel_predictor(x)
    carried = _carry_mask(up, kernels, mask, update)
    source = lambda y, x: (y // 2, x // 2)  # noqa: E731
    expected = _hand_reassemble(mask, kernels, 3, source) / _hand_reassemble(torch.ones_like(mask), kernels, 3, source)
    if update == "soft":
        assert torch.allclose(carried[0, 0].double(), expected.clamp(0, 1), atol=1e-6)
        assert 0 < carried.min() < 0.5 < carried.max() <= 1  # soft values inside the hole's border
    else:
        assert torch.equal(carried[0, 0], (expected > 0).float())


def test_mask_through_carafe_down_uses_its_kernels() -> None:
    torch.manual_seed(3)
    down = CarafeDownsample(8, 2, k_down=3, c_m=4, backend="reference")
    torch.nn.init.normal_(down.kernel_predictor.encoder.weight, std=1.0)
    down.eval()
    x = torch.randn(1, 8, 7, 6)
    mask = torch.ones(1, 1, 7, 6)
    mask[..., 2:6, 0:4] = 0
    kernels = down.kernel_predictor(x)
    carried = _carry_mask(down, kernels, mask, "soft")
    source = lambda y, x: (2 * y, 2 * x)  # noqa: E731
    expected = _hand_reassemble(mask, kernels, 3, source) / _hand_reassemble(torch.ones_like(mask), kernels, 3, source)
    assert carried.shape == (1, 1, 4, 3)
    assert torch.allclose(carried[0, 0].double(), expected.clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_an_all_valid_mask_stays_valid_at_the_border(direction: str) -> None:
    """Issue #19 §3: with zero padding, Σ W·M of an all-ones mask is ~0.36 at a corner (uniform 5×5
    kernels: 9/25), so the next partial conv would rescale the border 2–3× more than the baseline's
    nearest-carried mask does. Normalised by the in-image kernel mass it is 1 everywhere."""
    torch.manual_seed(6)
    resampler = (CarafeUpsample(8, 2, k_up=5, c_m=4, backend="reference") if direction == "up"
                 else CarafeDownsample(8, 2, k_down=5, c_m=4, backend="reference").eval())
    x = torch.randn(1, 8, 8, 8)
    ones = torch.ones(1, 1, 8, 8)
    kernels = resampler.kernel_predictor(x)
    normalised = _carry_mask(resampler, kernels, ones, "soft")
    assert torch.allclose(normalised, torch.ones_like(normalised), atol=1e-6)
    padded = _carry_mask(resampler, kernels, ones, "soft", "zero_pad")
    assert padded[0, 0, 0, 0] < 0.7 and padded[0, 0, 0, 3] < 0.9  # what the zero-padded sum did
    # The partial conv after it then treats the border exactly as after the baseline's nearest mask.
    conv = PartialConv2d(8, 4, 3, padding=1)
    features = torch.randn(1, 8, *normalised.shape[-2:])
    baseline_mask = torch.ones_like(normalised)
    assert torch.allclose(conv(features, normalised)[0], conv(features, baseline_mask)[0], atol=1e-5)
    assert not torch.allclose(conv(features, padded)[0], conv(features, baseline_mask)[0], atol=1e-2)


def test_mask_border_choice_is_checked() -> None:
    with pytest.raises(ConfigError, match="model.mask_border must be one of"):
        build_partial_conv(CARAFE_UP, None, {"decoder": True}, mask_border="reflect")


def test_grouped_kernels_each_move_the_mask() -> None:
    torch.manual_seed(4)
    up = CarafeUpsample(8, 2, k_up=3, c_m=4, groups=2, backend="reference")
    torch.nn.init.normal_(up.kernel_predictor.encoder.weight, std=1.0)
    x = torch.randn(1, 8, 3, 3)
    mask = torch.ones(1, 1, 3, 3)
    mask[..., 1, 1] = 0
    kernels = up.kernel_predictor(x)
    source = lambda y, x: (y // 2, x // 2)  # noqa: E731
    per_group = [_hand_reassemble(mask, kernels[:, g * 9:(g + 1) * 9], 3, source)
                 / _hand_reassemble(torch.ones_like(mask), kernels[:, g * 9:(g + 1) * 9], 3, source) for g in range(2)]
    assert torch.allclose(_carry_mask(up, kernels, mask, "soft")[0, 0].double(),
                          ((per_group[0] + per_group[1]) / 2).clamp(0, 1), atol=1e-6)


def test_partial_generator_carries_the_mask_through_carafe_sites() -> None:
    """Every CARAFE site of the partial model moves the mask with the kernels it applies to the features."""
    torch.manual_seed(5)
    model = build_partial_conv(CARAFE_UP, CARAFE_DOWN, {"decoder": True, "encoder": True}, mask_update="binary")
    seen: list[tuple[str, torch.Tensor]] = []
    for name, module in model.named_modules():
        if isinstance(module, (UpsampleSite, StridedSite)):
            module.register_forward_hook(lambda m, args, out, name=name: seen.append((name, out[1])))
    image = torch.zeros(1, 3, 32, 32)
    hole = torch.zeros(1, 1, 32, 32)
    hole[..., 4:28, 4:28] = 1  # a hole larger than the encoder's receptive field closes
    model(image, hole)
    assert [name.split(".")[0] for name, _ in seen] == ["encoder", "encoder", "decoder", "decoder"]
    assert all(set(mask.unique().tolist()) <= {0.0, 1.0} for _, mask in seen)
    assert seen[0][1].shape[-1] == 16 and seen[1][1].shape[-1] == 8 and seen[-1][1].shape[-1] == 32
    assert (seen[0][1] == 0).any()  # the hole is still open after the first downsampling


def test_conv_block_partial_flag() -> None:
    assert isinstance(ConvBlock(4, 8, 3, partial=True).conv, PartialConv2d)
    assert type(ConvBlock(4, 8, 3).conv) is nn.Conv2d

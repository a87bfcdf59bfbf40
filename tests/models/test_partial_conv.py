"""PartialConv2d follows NVIDIA's rule (NVIDIA/partialconv models/partialconv2d.py, single-channel mask).

M' = clamp(conv(M, 1), 0, 1); out = W·(X⊙M)·k²/(ΣM + 1e-8) + b where M' = 1, else 0; zero padding
counts as missing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from carafe_exp.models.partial_conv import PartialConv2d


def _ones_layer(bias: float | None) -> PartialConv2d:
    layer = PartialConv2d(1, 1, 3, padding=1, bias=bias is not None)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        if bias is not None:
            layer.bias.fill_(bias)
    return layer


def test_hand_computed_case() -> None:
    """A 4×4 image 1..16, 3×3 all-ones weights, bias 0.5; the left two columns are the hole."""
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    mask = torch.tensor([[0, 0, 1, 1]] * 4, dtype=torch.float32).reshape(1, 1, 4, 4)
    out, new_mask = _ones_layer(0.5)(x, mask)

    # (1, 2): window rows 0-2, cols 1-3; valid cols 2-3: 3+4+7+8+11+12 = 45 over 6 valid of 9.
    assert out[0, 0, 1, 2].item() == pytest.approx(45 * 9 / 6 + 0.5)
    # (0, 3): corner; padding is missing: valid pixels 3, 4, 7, 8 = 22 over 4 of 9.
    assert out[0, 0, 0, 3].item() == pytest.approx(22 * 9 / 4 + 0.5)
    # (1, 1): window cols 0-2, only col 2 valid: 3 + 7 + 11 = 21 over 3 of 9.
    assert out[0, 0, 1, 1].item() == pytest.approx(21 * 9 / 3 + 0.5)
    # Column 0: every window sees only cols 0-1, all hole: output 0 (bias included) and mask 0.
    assert out[0, 0, :, 0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert new_mask[0, 0].tolist() == [[0.0, 1.0, 1.0, 1.0]] * 4


def test_without_bias_and_all_valid_is_a_plain_convolution_inside() -> None:
    torch.manual_seed(0)
    layer = PartialConv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 6, 6)
    out, new_mask = layer(x, torch.ones(2, 1, 6, 6))
    plain = F.conv2d(x, layer.weight, padding=1)
    # Interior windows are complete: ratio 1. Border windows are renormalised (k² / in-image count).
    assert torch.allclose(out[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1], atol=1e-5)
    assert torch.allclose(out[..., 0, 0], plain[..., 0, 0] * 9 / 4, atol=1e-5)
    assert torch.equal(new_mask, torch.ones(2, 1, 6, 6))


def _unfold_reference(layer: PartialConv2d, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule written out per window with unfold (an independent implementation)."""
    k = layer.kernel_size
    unfold = dict(kernel_size=k, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    cols = F.unfold(x * mask, **unfold)                       # (N, C·k², L)
    counts = F.unfold(mask, **unfold).sum(dim=1)              # (N, L) valid pixels per window
    raw = layer.weight.reshape(layer.out_channels, -1) @ cols  # (N, O, L)
    out_h = (x.shape[2] + 2 * layer.padding[0] - layer.dilation[0] * (k[0] - 1) - 1) // layer.stride[0] + 1
    out_w = (x.shape[3] + 2 * layer.padding[1] - layer.dilation[1] * (k[1] - 1) - 1) // layer.stride[1] + 1
    valid = (counts > 0).float().unsqueeze(1)
    scaled = raw * (k[0] * k[1]) / counts.clamp_min(1e-8).unsqueeze(1) * valid
    if layer.bias is not None:
        scaled = (scaled + layer.bias.view(1, -1, 1)) * valid
    return scaled.reshape(x.shape[0], -1, out_h, out_w), valid.reshape(x.shape[0], 1, out_h, out_w)


@pytest.mark.parametrize("stride,dilation,bias", [(1, 1, True), (2, 1, True), (1, 2, False), (2, 1, False)])
def test_matches_an_unfold_reference(stride: int, dilation: int, bias: bool) -> None:
    torch.manual_seed(stride * 10 + dilation)
    layer = PartialConv2d(3, 4, 3, stride=stride, padding=dilation, dilation=dilation, bias=bias)
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 9, 8)
    mask = (torch.rand(2, 1, 9, 8) > 0.6).float()
    mask[0, :, :4, :] = 0  # a large hole: some windows see nothing
    out, new_mask = layer(x, mask)
    expected, expected_mask = _unfold_reference(layer, x, mask)
    assert torch.equal(new_mask, expected_mask)
    assert torch.allclose(out, expected, atol=1e-5)


def test_mask_carries_no_gradient_and_features_do() -> None:
    layer = _ones_layer(0.0)
    x = torch.randn(1, 1, 5, 5, requires_grad=True)
    mask = torch.ones(1, 1, 5, 5)
    mask[..., 2, 2] = 0
    out, new_mask = layer(x, mask)
    assert not new_mask.requires_grad
    out.sum().backward()
    assert x.grad is not None and x.grad[0, 0, 2, 2] == 0  # the hole pixel never reaches the output


def test_bad_mask_shape_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"mask must be \(N, 1, H, W\) matching x \(1, 1, 4, 4\), got \(1, 3, 4, 4\)"):
        _ones_layer(None)(torch.zeros(1, 1, 4, 4), torch.ones(1, 3, 4, 4))


@pytest.mark.parametrize("mode", ["autocast_float16", "half_model"])
def test_float16_keeps_empty_windows_at_zero_instead_of_nan(mode: str) -> None:
    """``trainer.precision=16-mixed`` / ``16-true``: a window with no valid pixel must still give 0 (NVIDIA's
    M' = 0 there), not k²/(0 + 1e-8) · 0, whose 1e-8 rounds to 0 in float16 and makes 0·inf = NaN."""
    torch.manual_seed(0)
    layer = _ones_layer(0.5)
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    mask = torch.tensor([[0, 0, 1, 1]] * 4, dtype=torch.float32).reshape(1, 1, 4, 4)
    expected, expected_mask = layer(x, mask)
    if mode == "autocast_float16":
        with torch.autocast("cpu", dtype=torch.float16):
            out, new_mask = layer(x.half(), mask)
    else:
        out, new_mask = layer.half()(x.half(), mask.half())
    assert torch.isfinite(out).all()
    assert out[0, 0, :, 0].tolist() == [0.0, 0.0, 0.0, 0.0]  # the all-hole column: 0, as in float32
    torch.testing.assert_close(out.float(), expected, rtol=2e-3, atol=0.1)  # float16 rounding of values up to ~70
    assert torch.equal(new_mask.float(), expected_mask)

"""DPP and LIP against brute-force window loops; their initial behaviour and parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample import build_downsampler
from carafe_exp.resample.lip import lip_pool


def _window(center: int, kernel_size: int, size: int) -> range:
    """Input indices of the k-window centred at ``center``, clipped to the map."""
    r = kernel_size // 2
    return range(max(center - r, 0), min(center + r + 1, size))


def _dpp_by_loops(x: torch.Tensor, alpha: torch.Tensor, lam: torch.Tensor, scale: int,
                  kernel_size: int) -> torch.Tensor:
    """DPP as written in the module docstring, one window at a time (float64): window p centred at s·p."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, -(-h // scale), -(-w // scale), dtype=torch.float64)
    for b in range(n):
        for ch in range(c):
            for oy in range(out.shape[2]):
                for ox in range(out.shape[3]):
                    rows, cols = _window(oy * scale, kernel_size, h), _window(ox * scale, kernel_size, w)
                    values = [float(x[b, ch, i, j]) for i in rows for j in cols]
                    mean = sum(values) / len(values)
                    deviations = [(v - mean) ** 2 + 1e-3 for v in values]
                    mean_deviation = sum(deviations) / len(deviations)
                    weights = [(d / mean_deviation) ** float(lam[ch]) + float(alpha[ch]) for d in deviations]
                    out[b, ch, oy, ox] = sum(wt * v for wt, v in zip(weights, values)) / sum(weights)
    return out


@pytest.mark.parametrize(("scale", "kernel_size"), [(2, 3), (3, 3), (2, 5)])
def test_dpp_matches_its_formula_window_by_window(scale: int, kernel_size: int) -> None:
    module = build_downsampler("dpp", 3, scale, kernel_size=kernel_size).double()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    expected = _dpp_by_loops(x, module.log_alpha.detach().exp(), module.log_lambda.detach().exp(), scale,
                             kernel_size)
    torch.testing.assert_close(module(x), expected)


def test_dpp_windows_are_centred_like_every_other_downsampler() -> None:
    """Issue: 2x2 DPP windows sat at s·y + (s−1)/2; a spike at (2y, 2x) must land in output (y, x) only."""
    module = build_downsampler("dpp", 1, 2)
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 6] = 1.0
    out = module(x)
    reference = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
    assert out.argmax() == reference.argmax() == 2 * 4 + 3  # output (2, 3) is centred on input (4, 6)
    # The spike sits in no window but those centred within one pixel of it, as for the 3x3 average pool.
    assert torch.equal(out > 0, reference > 0)


def test_dpp_emphasises_details_and_tends_to_average_pooling_for_large_alpha() -> None:
    module = build_downsampler("dpp", 1, 2)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 4.0  # one spike in the window: its deviation is largest, so it gets the largest weight
    assert module(x)[0, 0, 0, 0].item() > F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)[0, 0, 0, 0]
    with torch.no_grad():
        module.log_alpha.fill_(20.0)  # weights ≈ exp(20) everywhere: plain mean over the valid window
    torch.testing.assert_close(module(x), F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False))


def _lip_by_loops(x: torch.Tensor, logits: torch.Tensor, k: int, s: int) -> torch.Tensor:
    n, c, h, w = x.shape
    r = k // 2
    out = torch.zeros(n, c, -(-h // s), -(-w // s), dtype=torch.float64)
    for b, ch, oy, ox in ((b, ch, oy, ox) for b in range(n) for ch in range(c)
                          for oy in range(out.shape[2]) for ox in range(out.shape[3])):
        num = den = 0.0
        for i in range(oy * s - r, oy * s + r + 1):
            for j in range(ox * s - r, ox * s + r + 1):
                if 0 <= i < h and 0 <= j < w:
                    weight = math.exp(float(logits[b, ch, i, j]))
                    num += weight * float(x[b, ch, i, j])
                    den += weight
        out[b, ch, oy, ox] = num / den
    return out


def test_lip_pool_is_an_importance_weighted_average_over_valid_pixels() -> None:
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    logits = torch.rand(1, 2, 5, 6, dtype=torch.float64) * 12
    torch.testing.assert_close(lip_pool(x, logits, 3, 2), _lip_by_loops(x, logits, 3, 2))


@pytest.mark.parametrize(("channels", "logit_net"), [(64, "simplified"), (128, "bottleneck")])
def test_lip_picks_the_official_logit_net_and_starts_as_average_pooling(channels: int, logit_net: str) -> None:
    module = build_downsampler("lip", channels, 2)
    assert module.logit_net_kind == logit_net
    x = torch.randn(2, channels, 7, 9)
    expected = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
    torch.testing.assert_close(module(x), expected)


def test_parameter_counts_match_closed_forms() -> None:
    def params(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    c, width = 256, 128
    assert params(build_downsampler("dpp", c, 2)) == 2 * c
    assert params(build_downsampler("lip", c, 2, logit_net="simplified")) == 9 * c * c + 2 * c
    bottleneck = c * width + 2 * width + 9 * width * width + 2 * width + width * c + 2 * c
    assert params(build_downsampler("lip", c, 2)) == bottleneck
    assert params(build_downsampler("conv", c, 2)) == 9 * c * c + c
    assert params(build_downsampler("maxpool", c, 2)) == params(build_downsampler("avgpool", c, 2)) == 0

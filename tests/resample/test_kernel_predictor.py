"""The CARAFE kernel predictor: normalisers, kernel layout, compressor options, mmcv initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample import CarafeKernelPredictor, normalize_kernels


def _sharpen(predictor: CarafeKernelPredictor) -> None:
    # The mmcv init makes every kernel nearly uniform; large weights make the sums a real check.
    nn.init.normal_(predictor.encoder.weight, std=1.0)
    nn.init.normal_(predictor.encoder.bias, std=1.0)


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("normalizer", ["softmax", "sigmoid_norm"])
def test_normalised_kernels_sum_to_one_per_group(direction: str, normalizer: str) -> None:
    k, groups, scale = 3, 2, 2
    predictor = CarafeKernelPredictor(8, scale, kernel_size=k, compressed_channels=4, normalizer=normalizer,
                                      groups=groups, direction=direction)
    _sharpen(predictor)
    kernels = predictor(torch.randn(2, 8, 5, 7))
    expected_hw = (10, 14) if direction == "up" else (3, 4)
    assert kernels.shape == (2, groups * k * k, *expected_hw)
    per_group = kernels.view(2, groups, k * k, *expected_hw)
    assert (per_group >= 0).all()
    torch.testing.assert_close(per_group.sum(dim=2), torch.ones(2, groups, *expected_hw))
    assert per_group.std(dim=2).mean() > 0.05, "kernels are near uniform; the sum check would be trivial"


def test_sigmoid_kernels_are_gates_not_distributions() -> None:
    logits = torch.randn(1, 9, 4, 4) * 3
    kernels = normalize_kernels(logits, 3, 1, "sigmoid")
    torch.testing.assert_close(kernels, torch.sigmoid(logits))
    assert not torch.allclose(kernels.sum(dim=1), torch.ones(1, 4, 4))


def test_softmax_is_taken_over_each_groups_taps_only() -> None:
    logits = torch.randn(1, 2 * 9, 3, 3)
    kernels = normalize_kernels(logits, 3, 2, "softmax")
    torch.testing.assert_close(kernels[:, :9], logits[:, :9].softmax(dim=1))
    torch.testing.assert_close(kernels[:, 9:], logits[:, 9:].softmax(dim=1))


def test_upsampling_kernels_follow_the_mmcv_pixel_shuffle_layout() -> None:
    # Kernel channel t of output (y, x) comes from encoder channel t·s² + (y%s)·s + (x%s) at (y//s, x//s).
    k, scale, channels = 3, 2, 6
    predictor = CarafeKernelPredictor(channels, scale, kernel_size=k, compressed_channels=None,
                                      normalizer="sigmoid", direction="up")
    _sharpen(predictor)
    x = torch.randn(1, channels, 3, 4)
    kernels = predictor(x)
    raw = predictor.encoder(x)
    for y in range(6):
        for xx in range(8):
            for t in (0, 4, 8):
                source = raw[0, t * scale * scale + (y % scale) * scale + (xx % scale), y // scale, xx // scale]
                torch.testing.assert_close(kernels[0, t, y, xx], torch.sigmoid(source))


def test_downsampling_kernels_are_predicted_at_the_source_pixels() -> None:
    # Output (y, x) is centred on input (s·y, s·x): the strided encoder's window must be centred there too.
    predictor = CarafeKernelPredictor(4, 2, kernel_size=3, encoder_kernel_size=3, compressed_channels=None,
                                      normalizer="sigmoid", direction="down")
    _sharpen(predictor)
    x = torch.randn(1, 4, 7, 7)
    full_resolution = F.conv2d(x, predictor.encoder.weight, predictor.encoder.bias, padding=1)
    torch.testing.assert_close(predictor(x), torch.sigmoid(full_resolution[:, :, ::2, ::2]))


def test_compressor_options() -> None:
    plain = CarafeKernelPredictor(32, 2, compressed_channels=8)
    assert isinstance(plain.compressor, nn.Conv2d) and plain.compressor.bias is not None
    normed = CarafeKernelPredictor(32, 2, compressed_channels=8, compressor_norm=True, direction="down")
    conv, norm, act = normed.compressor
    assert isinstance(conv, nn.Conv2d) and conv.bias is None  # BN follows, so the bias is redundant
    assert isinstance(norm, nn.BatchNorm2d) and isinstance(act, nn.ReLU)
    removed = CarafeKernelPredictor(32, 2, compressed_channels=None, compressor_norm=True)
    assert isinstance(removed.compressor, nn.Identity)
    assert removed.encoder.in_channels == 32


def test_initialisation_follows_mmcv() -> None:
    predictor = CarafeKernelPredictor(256, 2, compressed_channels=64)
    compressor, encoder = predictor.compressor, predictor.encoder
    xavier_bound = (6 / (256 + 64)) ** 0.5
    assert compressor.weight.abs().max() <= xavier_bound
    assert compressor.weight.abs().max() > 0.9 * xavier_bound  # uniform, not a narrower default
    assert abs(encoder.weight.std().item() - 0.001) < 1e-4
    assert torch.count_nonzero(compressor.bias) == 0 and torch.count_nonzero(encoder.bias) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kernel_size": 4}, "k_up"), ({"encoder_kernel_size": 2}, "k_encoder"), ({"normalizer": "relu"}, "normalizer"),
     ({"groups": 5}, "groups"), ({"compressed_channels": 0}, "c_m")],
)
def test_bad_hyper_parameters_fail_clearly(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CarafeKernelPredictor(16, 2, **kwargs)

"""The inpainting task's PatchGAN discriminators against their references' known shapes and sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.patch_discriminator import build_patch_discriminator


def test_nlayer_is_pix2pix_70x70_patchgan() -> None:
    """pix2pix NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3): 30×30 scores for a 256×256 image."""
    disc = build_patch_discriminator("nlayer")
    scores = disc(torch.zeros(1, 3, 256, 256), torch.zeros(1, 1, 256, 256))
    assert scores.shape == (1, 1, 30, 30)
    # 4×4 convs 3→64 (bias), 64→128, 128→256, 256→512 (BN, no bias), 512→1 (bias).
    expected = (16 * 3 * 64 + 64) + (16 * 64 * 128 + 2 * 128) + (16 * 128 * 256 + 2 * 256) \
        + (16 * 256 * 512 + 2 * 512) + (16 * 512 + 1)
    assert sum(p.numel() for p in disc.parameters()) == expected
    assert [m.stride[0] for m in disc.modules() if isinstance(m, nn.Conv2d)] == [2, 2, 2, 1, 1]
    assert not disc.with_mask


def test_nlayer_receptive_field_is_70_pixels() -> None:
    disc = build_patch_discriminator("nlayer").eval()
    image = torch.zeros(1, 3, 128, 128, requires_grad=True)
    disc(image, torch.zeros(1, 1, 128, 128))[0, 0, 7, 7].backward()
    rows = image.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 70


def test_sn_patchgan_is_deepfill_v2s() -> None:
    """DeepFill v2 / mmagic: six 5×5 stride-2 spectral-normalised convs 64-128-256-256-256-256 on image + mask."""
    disc = build_patch_discriminator("sn_patchgan")
    assert disc.with_mask
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (4, 64, 5, 2), (64, 128, 5, 2), (128, 256, 5, 2), (256, 256, 5, 2), (256, 256, 5, 2), (256, 256, 5, 2)]
    assert all(hasattr(c, "parametrizations") and "weight" in c.parametrizations for c in convs)
    assert disc(torch.zeros(2, 3, 256, 256), torch.zeros(2, 1, 256, 256)).shape == (2, 256, 4, 4)


def test_too_small_images_are_refused_with_the_minimum() -> None:
    disc = build_patch_discriminator("nlayer")
    assert disc.min_size == 24  # 24 → 12 → 6 → 3 → 2 → 1
    with pytest.raises(ConfigError, match="at least 24x24 pixels, got 16x16"):
        disc(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))


def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="discriminator.kind must be one of"):
        build_patch_discriminator("global_local")


@pytest.mark.parametrize(("kind", "options", "message"), [
    ("nlayer", {"base_channels": 0}, "base_channels must be >= 1, got 0"),
    ("sn_patchgan", {"base_channels": -4}, "base_channels must be >= 1, got -4"),
    ("nlayer", {"num_layers": -1}, "num_layers must be >= 0 for nlayer, got -1"),
    # Without a convolution the "scores" would be the image and mask themselves.
    ("sn_patchgan", {"num_layers": 0}, "num_layers must be >= 1 for sn_patchgan, got 0"),
])
def test_bad_sizes_are_config_errors(kind: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_patch_discriminator(kind, **options)


def test_nlayer_and_generator_use_the_pix2pix_normal_init() -> None:
    """pix2pix ``init_weights('normal', 0.02)`` / mmagic ``generation_init_weights(init_gain=0.02)``:
    conv weights N(0, 0.02) with zero bias, BatchNorm scales N(1, 0.02) with zero shift."""
    from carafe_exp.models.global_local import build_global_local

    torch.manual_seed(0)
    for model in (build_patch_discriminator("nlayer"), build_global_local()):
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert convs and norms
        weights = torch.cat([m.weight.flatten() for m in convs])
        assert abs(float(weights.mean())) < 1e-3 and float(weights.std()) == pytest.approx(0.02, rel=0.02)
        assert all(m.bias is None or not m.bias.any() for m in convs)
        scales = torch.cat([m.weight for m in norms])
        assert float(scales.mean()) == pytest.approx(1.0, abs=0.01) and float(scales.std()) == pytest.approx(0.02, rel=0.15)
        assert not torch.cat([m.bias for m in norms]).any()

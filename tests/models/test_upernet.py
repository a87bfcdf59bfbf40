"""UperNet (carafe_exp.models.upernet): CSAIL's structure, every site on/off, every upsampler at every site.

The reference is CSAIL semantic-segmentation-pytorch ``models/models.py`` (``UPerNet.forward``,
``ModelBuilder.weights_init``), the implementation the CARAFE supplement (footnote 1) says the
papers used; the sites are CARAFE §4.2 (PPM, FPN, FUSE) and CARAFE++ §4.1 (backbone).
Tiny widths (ResNet-18, 16 decoder channels) keep these fast; one test checks the paper's widths.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.resnet import build_resnet
from carafe_exp.models.upernet import build_upernet
from carafe_exp.paths import config_dir
from carafe_exp.resample import DOWNSAMPLERS, UPSAMPLERS
from carafe_exp.resample.carafe import CarafeDownsample, CarafeUpsample

TINY = {"backbone": {"depth": 18}, "channels": 16}
NUM_CLASSES = 5
# Odd sizes: C2..C5 are 19x26, 10x13, 5x7, 3x4, so every x2 step overshoots and is cropped.
ODD_SIZE = (75, 101)
UPSAMPLER_OPTIONS = sorted(p.stem for p in (config_dir() / "upsampler").glob("*.yaml"))
GUIDED = {name for name in UPSAMPLER_OPTIONS if getattr(UPSAMPLERS[name], "requires_guide", False)}


def upsampler_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(config_dir() / "upsampler" / f"{name}.yaml"))


def tiny(sites: dict[str, bool], upsampler: str | dict = "carafe", downsampler: str = "conv", **options) -> nn.Module:
    torch.manual_seed(0)
    return build_upernet(NUM_CLASSES, upsampler=upsampler, downsampler=downsampler, sites=sites,
                         **{**TINY, **options})


def forward_backward(model: nn.Module, size: tuple[int, int] = ODD_SIZE) -> torch.Tensor:
    model.train()
    images = torch.randn(2, 3, *size)
    out = model(images)["out"]
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


def csail_upernet_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CSAIL ``UPerNet.forward`` transcribed (bilinear resizes by size), on the model's own layers."""
    head = model.decode_head
    conv_out = list(model.backbone(images).values())
    conv5 = conv_out[-1]
    up = lambda x, size: F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)  # noqa: E731
    ppm_out = [conv5]
    for pool_scale, pool_conv in zip(head.ppm.pooling, head.ppm.convs):
        ppm_out.append(pool_conv(up(pool_scale(conv5), conv5.shape[2:])))  # the conv comes after the resize
    f = head.ppm.bottleneck(torch.cat(ppm_out, 1))
    fpn_feature_list = [f]  # P5: no output conv
    for i in reversed(range(len(conv_out) - 1)):
        conv_x = head.fpn_in[i](conv_out[i])
        f = conv_x + up(f, conv_x.shape[2:])  # the pre-conv sum travels down
        fpn_feature_list.append(head.fpn_out[i](f))
    fpn_feature_list.reverse()
    output_size = fpn_feature_list[0].shape[2:]
    fusion = [fpn_feature_list[0]] + [up(p, output_size) for p in fpn_feature_list[1:]]
    return head.conv_last(torch.cat(fusion, 1))


@pytest.mark.parametrize("sites", [{"ppm": False, "fpn": False, "fuse": False},
                                   {"ppm": True, "fpn": True, "fuse": True}])
def test_the_bilinear_model_is_csails_upernet(sites: dict[str, bool]) -> None:
    """Sites off, or on with upsampler=bilinear (bilinear_is_original), give exactly CSAIL's forward."""
    model = tiny(sites, upsampler=upsampler_config("bilinear")).eval()
    assert not any(isinstance(m, tuple(UPSAMPLERS.values())) for m in model.modules())
    images = torch.randn(2, 3, *ODD_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(images)["out"], csail_upernet_forward(model, images), rtol=0, atol=0)


def test_sequential_fuse_and_two_step_ppm_with_bilinear_x2_modules() -> None:
    """CARAFE §4.2: PPM bilinear to half size then x2; FUSE F4=[P4,up(P5)], F3=[P3,up(F4)], F2=[P2,up(F3)]."""
    model = tiny({"ppm": True, "fpn": False, "fuse": True}, upsampler=upsampler_config("bilinear"),
                 bilinear_is_original=False).eval()
    head = model.decode_head
    # upsamplers[i] takes the concatenation of levels above i to level i: [P3,P4,P5] (3C), [P4,P5], [P5] (C).
    assert [m.channels for m in head.fuse.upsamplers] == [48, 32, 16]
    assert [m.channels for m in head.ppm.upsamplers] == [512] * 4  # CSAIL order: on the pooled C5 (R-18: 512)
    images = torch.randn(1, 3, *ODD_SIZE)
    x2 = lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    half = lambda size: ((size[0] + 1) // 2, (size[1] + 1) // 2)  # noqa: E731
    with torch.no_grad():
        c = list(model.backbone(images).values())
        size5 = c[3].shape[2:]
        branches = [c[3]] + [conv(x2(F.interpolate(pool(c[3]), size=half(size5), mode="bilinear",
                                                   align_corners=False))[..., :size5[0], :size5[1]])
                             for pool, conv in zip(head.ppm.pooling, head.ppm.convs)]
        f = head.ppm.bottleneck(torch.cat(branches, 1))
        pyramid = [f]
        for i in (2, 1, 0):
            lateral = head.fpn_in[i](c[i])
            f = lateral + F.interpolate(f, size=lateral.shape[2:], mode="bilinear", align_corners=False)
            pyramid.append(head.fpn_out[i](f))
        p2, p3, p4, p5 = reversed(pyramid)
        crop = lambda x, ref: x[..., :ref.shape[2], :ref.shape[3]]  # noqa: E731
        f4 = torch.cat([p4, crop(x2(p5), p4)], 1)
        f3 = torch.cat([p3, crop(x2(f4), p3)], 1)
        f2 = torch.cat([p2, crop(x2(f3), p2)], 1)
        torch.testing.assert_close(model(images)["out"], head.conv_last(f2), rtol=0, atol=0)


def test_paper_widths_and_csail_initialisation() -> None:
    """R-50, 512 channels, PPM 2048->512 per scale, FUSE 2048->512, 150 classes; Kaiming-normal, BN beta 1e-4."""
    torch.manual_seed(0)
    model = build_upernet(150, upsampler="carafe", sites={"ppm": True, "fpn": True, "fuse": True})
    head = model.decode_head
    assert [conv[0].weight.shape[:2] for conv in head.ppm.convs] == [(512, 2048)] * 4
    assert head.ppm.bottleneck[0].weight.shape == (512, 2048 + 4 * 512, 3, 3)
    assert [conv[0].in_channels for conv in head.fpn_in] == [256, 512, 1024]  # C2-C4 only
    assert len(head.fpn_out) == 3 and head.conv_last[0][0].weight.shape == (512, 2048, 3, 3)
    assert head.conv_last[1].out_channels == 150 and not any(isinstance(m, nn.Dropout2d) for m in model.modules())
    compressors = [m.kernel_predictor.compressor.in_channels for m in head.resamplers()]
    assert compressors == [2048] * 4 + [512] * 3 + [1536, 1024, 512]  # PPM (CSAIL order), FPN, FUSE (to P2, P3, P4)
    assert model.aux_head is None
    fuse_conv = head.conv_last[0][0].weight
    assert fuse_conv.std().item() == pytest.approx((2.0 / (2048 * 9)) ** 0.5, rel=0.02)  # Kaiming normal, fan-in
    assert all(torch.all(bn.bias == 1e-4) and torch.all(bn.weight == 1) for bn in head.modules()
               if isinstance(bn, nn.BatchNorm2d) and not any(bn is m for r in head.resamplers() for m in r.modules()))
    # The resamplers keep their own (mmcv) initialisation: the kernel encoder is N(0, 0.001).
    assert head.resamplers()[0].kernel_predictor.encoder.weight.std().item() < 0.01


SITE_COMBINATIONS = [dict(zip(("ppm", "fpn", "fuse", "backbone"), flags))
                     for flags in itertools.product((False, True), repeat=4)]


SITE_LETTERS = {"ppm": "P", "fpn": "F", "fuse": "U", "backbone": "B"}  # the tables' column letters


@pytest.mark.parametrize("sites", SITE_COMBINATIONS,
                         ids=lambda s: "".join(SITE_LETTERS[k] for k, v in s.items() if v) or "none")
def test_every_site_combination_trains_at_odd_sizes(sites: dict[str, bool]) -> None:
    model = tiny(sites, upsampler="carafe", downsampler="carafe")
    out = forward_backward(model)
    assert out.shape == (2, NUM_CLASSES, 19, 26)  # 1/4 of the input, rounded up as ResNet's strides do
    counts = {site: len(names) for site, names in model.sites.items()}
    assert counts == {"ppm": 4 * sites["ppm"], "fpn": 3 * sites["fpn"], "fuse": 3 * sites["fuse"],
                      "backbone": 7 * sites["backbone"]}
    carafe_up = sum(isinstance(m, CarafeUpsample) for m in model.modules())
    carafe_down = sum(isinstance(m, CarafeDownsample) for m in model.modules())
    assert (carafe_up, carafe_down) == (counts["ppm"] + counts["fpn"] + counts["fuse"], counts["backbone"])


@pytest.mark.parametrize("site", ["ppm", "fpn", "fuse"])
# dysample_plus is DySample with another default (dyscope): `dysample` covers its code at every site.
@pytest.mark.parametrize("option", [o for o in UPSAMPLER_OPTIONS if o != "dysample_plus"])
def test_every_upsampler_option_at_every_site(site: str, option: str) -> None:
    sites = {"ppm": False, "fpn": False, "fuse": False, site: True}
    width = {"channels": 32} if option == "a2u" else {}  # A2U's GroupNorm(32) needs a multiple of 32
    if option in GUIDED and site != "fpn":
        # PPM and FUSE have no high-res guide (spec newer-upsamplers §7): refused in one line naming the site.
        with pytest.raises(ConfigError, match=f"upsampler={option} needs a guide .*model.sites.{site}"):
            tiny(sites, upsampler=upsampler_config(option), bilinear_is_original=False, **width)
        return
    model = tiny(sites, upsampler=upsampler_config(option), bilinear_is_original=False, **width)
    expected = {"ppm": 4, "fpn": 3, "fuse": 3}[site]
    assert sum(isinstance(m, UPSAMPLERS[option]) for m in model.modules()) == expected
    # A guided upsampler needs exact ×2 steps: the input padded to SIZE_DIVISOR, as the task does.
    forward_backward(model, size=(64, 64) if option in GUIDED else (61, 45))


def test_ppm_conv_first_upsamples_the_narrow_map() -> None:
    model = tiny({"ppm": True, "fpn": False, "fuse": False}, ppm_conv_first=True)
    assert [m.kernel_predictor.compressor.in_channels for m in model.decode_head.ppm.upsamplers] == [16] * 4
    forward_backward(model)


def test_auxiliary_head_only_when_asked_and_only_in_training() -> None:
    model = tiny({"ppm": False, "fpn": False, "fuse": False}, aux_head=True, aux_channels=8)
    out = model.train()(torch.randn(2, 3, 64, 96))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, NUM_CLASSES, 4, 6)  # on C4, stride 16
    assert isinstance(model.aux_head.dropout, nn.Dropout2d) and model.aux_head.dropout.p == 0.1
    with torch.no_grad():
        assert set(model.eval()(torch.randn(1, 3, 64, 96))) == {"out"}


def test_a_backbone_pretrained_with_its_downsamplers_loads_every_tensor(tmp_path: Path) -> None:
    """CARAFE++ §5.1: the segmentation backbone is the classification network, CARAFE++ tensors included."""
    torch.manual_seed(1)
    classifier = build_resnet(depth=18, num_classes=7, downsampler="carafe")
    path = tmp_path / "classifier.pth"
    torch.save(classifier.state_dict(), path)
    model = build_upernet(NUM_CLASSES, upsampler="bilinear", downsampler="carafe",
                          sites={"ppm": True, "fpn": True, "fuse": True, "backbone": True},
                          backbone={"depth": 18, "weights": str(path)}, channels=16)
    saved = classifier.state_dict()
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("fc.")}
    assert any("resample" in k for k in loaded)
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)


def test_downsampler_registry_is_used_for_the_backbone_site() -> None:
    model = tiny({"backbone": True}, downsampler="maxpool")
    modules = dict(model.named_modules())
    assert len(model.sites["backbone"]) == 7 and "backbone.maxpool" in model.sites["backbone"]
    assert all(isinstance(modules[n], DOWNSAMPLERS["maxpool"]) for n in model.sites["backbone"])


def test_unknown_site_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model.sites: upernet has no site\(s\) \['mask_head'\]"):
        tiny({"mask_head": True})


@pytest.mark.parametrize("pool_scales", [[], [0, 2], [1, -3]])
def test_bad_pool_scales_are_config_errors(pool_scales: list[int]) -> None:
    with pytest.raises(ConfigError, match=r"model.pool_scales must be a non-empty list of positive ints"):
        tiny({"ppm": True}, pool_scales=pool_scales)


def test_auxiliary_head_is_initialised_as_mmsegmentation() -> None:
    """mmseg FCNHead: its ConvModule calls mmcv ``kaiming_init`` (default mode fan_out, ReLU gain), BN γ 1 β 0;
    ``conv_seg`` is N(0, 0.01) with zero bias (mmseg ``BaseDecodeHead.init_weights``)."""
    from carafe_exp.models.upernet import FCNAuxHead

    torch.manual_seed(0)
    head = FCNAuxHead(1024, NUM_CLASSES, channels=256)
    conv, norm = head.conv[0], head.conv[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / (256 * 9)) ** 0.5, rel=0.02)  # fan-out: 256·3·3
    assert torch.equal(norm.weight, torch.ones(256)) and not norm.bias.any()
    assert head.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1) and not head.classifier.bias.any()

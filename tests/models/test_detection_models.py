"""Faster / Mask R-CNN with resampling sites: every site x every resampler trains; FPN, mask head and DCN match references."""

from __future__ import annotations

import logging
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from carafe_exp.models.backbone_sites import backbone_site_modules
from carafe_exp.models.dcn import ModulatedDeformConv2d, apply_dcn
from carafe_exp.models.fpn import ResampledFPN
from carafe_exp.models.mask_head import ResampledMaskPredictor, mask_head_upsampler_spec
from carafe_exp.models.rcnn import build_faster_rcnn, build_mask_rcnn
from carafe_exp.errors import ConfigError
from carafe_exp.resample import DOWNSAMPLERS, ORIGINAL_DOWNSAMPLER, UPSAMPLERS
from carafe_exp.resample.guided import requires_guide

GUIDED = {name for name, cls in UPSAMPLERS.items() if requires_guide(cls)}
# dysample_plus is DySample with another default (dyscope): `dysample` covers its code at every site.
EVERY_UPSAMPLER = sorted(set(UPSAMPLERS) - {"dysample_plus"})

# Tiny budgets: a train step of R-50-FPN on two 64-px images takes about a second on 2 cores.
TINY = dict(min_size=64, max_size=64, rcnn=dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                                                rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
                                                rpn_batch_size_per_image=64, box_batch_size_per_image=16,
                                                box_detections_per_img=10))


def _batch(with_masks: bool) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=generator), torch.rand(3, 56, 64, generator=generator)]
    targets = []
    for image in images:
        h, w = image.shape[-2:]
        target = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0], [30.0, 20.0, 60.0, 50.0]]),
                  "labels": torch.tensor([1, 2])}
        if with_masks:
            masks = torch.zeros(2, h, w, dtype=torch.uint8)
            masks[0, 6:44, 4:40] = 1
            masks[1, 20:50, 30:60] = 1
            target["masks"] = masks
        targets.append(target)
    return images, targets


def _train_step(model: nn.Module, with_masks: bool) -> dict[str, torch.Tensor]:
    model.train()
    images, targets = _batch(with_masks)
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss), losses
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    return losses


@pytest.mark.parametrize("name", EVERY_UPSAMPLER)
def test_fpn_site_trains_with_every_upsampler(name: str) -> None:
    torch.manual_seed(0)
    model = build_faster_rcnn(3, upsampler=name, sites={"fpn": True}, **TINY)
    assert len(model.backbone.fpn.upsamplers) == 4  # FPN_CARAFE: P6 -> P5 is upsampled too
    assert all(type(u) is UPSAMPLERS[name] for u in model.backbone.fpn.upsamplers)
    losses = _train_step(model, with_masks=False)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    # The upsamplers sit in the top-down path, so learnable ones receive gradients.
    for upsampler in model.backbone.fpn.upsamplers:
        for parameter in upsampler.parameters():
            if parameter.requires_grad:
                assert parameter.grad is not None


@pytest.mark.parametrize("name", EVERY_UPSAMPLER)
def test_mask_head_site_trains_with_every_upsampler(name: str) -> None:
    torch.manual_seed(0)
    if name in GUIDED:
        # No high-res guide inside the RoI head (spec newer-upsamplers §7): refused, naming the site.
        with pytest.raises(ConfigError, match=f"upsampler={name} needs a guide .*model.sites.mask_head"):
            build_mask_rcnn(3, upsampler=name, sites={"fpn": False, "mask_head": True}, **TINY)
        return
    model = build_mask_rcnn(3, upsampler=name, sites={"fpn": False, "mask_head": True}, **TINY)
    upsample = model.roi_heads.mask_predictor.conv5_mask
    # deconv at the mask head is Mask R-CNN's own 2x2 layer; every other upsampler replaces it.
    assert isinstance(upsample, nn.ConvTranspose2d) == (name == "deconv")
    losses = _train_step(model, with_masks=True)
    assert "loss_mask" in losses


@pytest.mark.parametrize("name", sorted(DOWNSAMPLERS))
def test_backbone_site_trains_with_every_downsampler(name: str) -> None:
    torch.manual_seed(0)
    model = build_faster_rcnn(3, downsampler=name, sites={"fpn": False, "backbone": True}, **TINY)
    body = model.backbone.body
    if name == ORIGINAL_DOWNSAMPLER:
        assert isinstance(body.maxpool, nn.MaxPool2d)
    else:
        assert len(backbone_site_modules(body)) == 7
    _train_step(model, with_masks=False)
    # The strides still add up: C5 is at 1/32 of the 64-px input.
    features = model.backbone.body(torch.rand(1, 3, 64, 64))
    assert features["3"].shape[-2:] == (2, 2)


@pytest.mark.parametrize(("style", "upsamplers", "divisor"), [("fpn_carafe", 4, 64), ("torchvision", 3, 32)])
def test_both_fpn_styles_train_and_pad_to_their_multiple(style: str, upsamplers: int, divisor: int) -> None:
    torch.manual_seed(0)
    model = build_mask_rcnn(3, upsampler="carafe", sites={"fpn": True, "mask_head": True}, fpn_style=style, **TINY)
    assert model.transform.size_divisible == divisor
    assert len(model.backbone.fpn.upsamplers) == upsamplers
    _train_step(model, with_masks=True)


def test_resampled_fpn_with_nearest_equals_torchvision_fpn() -> None:
    torch.manual_seed(0)
    channels = [8, 16, 32, 64]
    reference = FeaturePyramidNetwork(channels, 16)
    ours = ResampledFPN(channels, 16, upsampler="nearest")
    ours.load_state_dict(reference.state_dict(), strict=True)  # same names, no extra tensors
    # torchvision's FPN without extra_blocks returns 4 levels; compare those and our pooled P6.
    feats = OrderedDict((str(i), torch.randn(2, c, 32 // 2 ** i, 48 // 2 ** i)) for i, c in enumerate(channels))
    expected = reference(feats)
    got = ours(feats)
    assert list(got) == ["0", "1", "2", "3", "pool"]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    torch.testing.assert_close(got["pool"], expected["3"][..., ::2, ::2])


def test_fpn_p6_takes_part_in_the_top_down_pass() -> None:
    torch.manual_seed(0)
    channels = [8, 16, 32, 64]
    fpn = ResampledFPN(channels, 16, upsampler="nearest", p6_in_top_down=True)
    feats = OrderedDict((str(i), torch.randn(1, c, 64 // 2 ** i, 64 // 2 ** i)) for i, c in enumerate(channels))
    out = fpn(feats)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    out["0"].sum().backward()
    # P6's lateral conv reaches even P2 through the top-down path (mmdetection FPN_CARAFE).
    assert fpn.p6_lateral.weight.grad is not None and fpn.p6_lateral.weight.grad.abs().sum() > 0


def test_fpn_crops_odd_sizes() -> None:
    fpn = ResampledFPN([8, 16], 8, upsampler="nearest")
    out = fpn(OrderedDict([("0", torch.randn(1, 8, 15, 9)), ("1", torch.randn(1, 16, 8, 5))]))
    assert out["0"].shape[-2:] == (15, 9)


@pytest.mark.parametrize("name", EVERY_UPSAMPLER)
def test_mask_predictor_gives_28x28_for_every_upsampler(name: str) -> None:
    if name in GUIDED:
        return  # refused at the mask head: test_mask_head_site_trains_with_every_upsampler
    predictor = ResampledMaskPredictor(256, 5, name)
    logits = predictor(torch.randn(3, 256, 14, 14))
    assert logits.shape == (3, 5, 28, 28)
    assert isinstance(predictor.relu, nn.ReLU) == (name == "deconv")


def test_mask_head_overrides_apply_to_their_upsampler_only() -> None:
    overrides = {"deconv": {"kernel_size": 2}}
    assert mask_head_upsampler_spec({"name": "deconv", "kernel_size": 3}, overrides) == \
        {"name": "deconv", "kernel_size": 2}
    assert mask_head_upsampler_spec("nearest", overrides) == "nearest"
    assert mask_head_upsampler_spec({"name": "carafe", "k_up": 5}, overrides) == {"name": "carafe", "k_up": 5}


@pytest.mark.parametrize("mask_head_site", [False, True])
def test_original_mask_rcnn_keeps_the_deconv_and_loads_torchvision_checkpoints(mask_head_site: bool) -> None:
    # With the site on, upsampler=deconv is the original 2x2 deconv + ReLU (CARAFE Table 3 "Deconv").
    ours = build_mask_rcnn(90, upsampler="deconv", sites={"fpn": False, "mask_head": mask_head_site},
                           fpn_style="torchvision")
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                  num_classes=91)
    result = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours_predictor, reference_predictor = ours.roi_heads.mask_predictor, reference.roi_heads.mask_predictor
    assert [type(m) for m in ours_predictor.children()] == [type(m) for m in reference_predictor.children()]
    assert repr(ours_predictor.conv5_mask) == repr(reference_predictor.conv5_mask)


def test_faster_rcnn_with_carafe_loads_torchvision_checkpoint_except_the_upsamplers() -> None:
    ours = build_faster_rcnn(90, upsampler="carafe", fpn_style="torchvision")
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                    num_classes=91)
    result = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("backbone.fpn.upsamplers.") for k in result.missing_keys)


def test_dcn_with_zero_offsets_is_half_the_convolution() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False)
    dcn = ModulatedDeformConv2d.from_conv(conv)
    x = torch.randn(2, 8, 11, 13)
    # Zero-initialised offsets sample the regular grid; the mask starts at sigmoid(0) = 1/2.
    torch.testing.assert_close(dcn(x), 0.5 * conv(x), rtol=1e-4, atol=1e-5)
    dcn(x).sum().backward()
    assert dcn.conv_offset.weight.grad.abs().sum() > 0


def test_dcn_backbone_replaces_layer2_to_4_and_trains() -> None:
    resnet = torchvision.models.resnet50()
    names = apply_dcn(resnet)
    assert len(names) == 4 + 6 + 3 and not any(n.startswith("layer1") for n in names)
    torch.manual_seed(0)
    model = build_faster_rcnn(3, backbone={"dcn": True}, **TINY)
    assert isinstance(model.backbone.body.layer3[0].conv2, ModulatedDeformConv2d)
    assert isinstance(model.backbone.body.layer1[0].conv2, nn.Conv2d)
    _train_step(model, with_masks=False)


def test_pretrained_backbone_loads_from_a_local_file_and_freezes_stage_1(tmp_path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    path = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), path)
    model = build_faster_rcnn(3, backbone={"weights": str(path), "frozen_stages": 1, "norm_eval": True}, **TINY)
    body = model.backbone.body
    torch.testing.assert_close(body.layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert not body.conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    model.train()
    assert not body.bn1.training and not body.layer4[0].bn1.training  # norm_eval
    assert model.backbone.fpn.training and model.roi_heads.training


def test_unused_resampler_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="carafe_exp.models.rcnn"):
        build_faster_rcnn(3, upsampler="bilinear", downsampler="maxpool", sites={"fpn": False, "backbone": False},
                          **TINY)
    text = caplog.text
    assert "upsampler=bilinear is not used" in text and "downsampler=maxpool is not used" in text


def test_bad_site_and_class_count_fail_clearly() -> None:
    with pytest.raises(ValueError, match="mask_head"):
        build_faster_rcnn(3, sites={"mask_head": True})
    with pytest.raises(ValueError, match="num_classes"):
        build_faster_rcnn(0)

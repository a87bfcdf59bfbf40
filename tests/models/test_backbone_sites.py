"""The backbone downsampling site: the 7 places of CARAFE++ §4.1 / Fig. 4, what they keep, what they change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from carafe_exp.models.backbone_sites import (
    ResampledBasicBlock,
    ResampledBottleneck,
    backbone_site_modules,
    replace_backbone_downsampling,
)
from carafe_exp.models.classifier import build_resnet_classifier
from carafe_exp.models.lip_resnet import LIPBottleneck
from carafe_exp.resample import DOWNSAMPLERS
from carafe_exp.resample.lip import lip_pool

SEVEN_SITES = ["maxpool", "layer2.0.resample_main", "layer2.0.resample_shortcut", "layer3.0.resample_main",
               "layer3.0.resample_shortcut", "layer4.0.resample_main", "layer4.0.resample_shortcut"]


def _stage_shapes(model: torchvision.models.ResNet, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    shapes.append(tuple(x.shape))
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        shapes.append(tuple(x.shape))
    return shapes


def test_conv_keeps_the_original_network() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    assert replace_backbone_downsampling(model, "conv") == []
    assert model.state_dict().keys() == reference.keys()
    assert isinstance(model.maxpool, torch.nn.MaxPool2d)
    assert backbone_site_modules(model) == []


@pytest.mark.parametrize("name", sorted(set(DOWNSAMPLERS) - {"conv"}))
def test_every_downsampler_goes_to_seven_places_and_keeps_stage_shapes(name: str) -> None:
    torch.manual_seed(0)
    original = torchvision.models.resnet50(weights=None).eval()
    swapped = torchvision.models.resnet50(weights=None).eval()
    sites = replace_backbone_downsampling(swapped, name)
    x = torch.randn(1, 3, 37, 29)  # odd sizes: every stage must still be ceil(H/2)
    assert _stage_shapes(swapped, x) == _stage_shapes(original, x)
    assert len(sites) == 7 and sites == backbone_site_modules(swapped)
    if name == "lip":  # the official LIP-ResNet block, below
        assert sites == [s.replace("resample_", "lip_") for s in SEVEN_SITES]
        return
    assert sites == SEVEN_SITES
    # Every original tensor keeps its name and shape (torchvision checkpoints load), the new ones are extra.
    original_state, swapped_state = original.state_dict(), swapped.state_dict()
    assert all(swapped_state[k].shape == v.shape for k, v in original_state.items())
    for layer, planes, in_channels in (("layer2", 128, 256), ("layer3", 256, 512), ("layer4", 512, 1024)):
        block = getattr(swapped, layer)[0]
        assert isinstance(block, ResampledBottleneck)
        # The convs the downsamplers precede lose their stride; conv1 runs at full resolution.
        assert block.conv1.stride == block.conv2.stride == block.downsample[0].stride == (1, 1)
        main, shortcut = block.resample_main, block.resample_shortcut
        assert main is not shortcut
        probe_main, probe_shortcut = torch.randn(1, planes, 6, 6), torch.randn(1, in_channels, 6, 6)
        assert main(probe_main).shape == (1, planes, 3, 3)  # on the block's `planes` channels
        assert shortcut(probe_shortcut).shape == (1, in_channels, 3, 3)  # on the block's input channels


def test_bottleneck_downsamples_after_conv1_and_before_the_projection() -> None:
    """CARAFE++ Fig. 4: conv1 → D → conv2 (stride 1) → conv3, shortcut D → 1×1 conv (stride 1), computed by hand."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    replace_backbone_downsampling(model, "avgpool")
    block = model.layer2[0]
    x = torch.randn(2, 256, 9, 11)
    pool = torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False)
    out = block.relu(block.bn1(F.conv2d(x, block.conv1.weight)))  # full resolution
    out = block.relu(block.bn2(F.conv2d(pool(out), block.conv2.weight, padding=1)))
    out = block.bn3(F.conv2d(out, block.conv3.weight))
    identity = block.downsample[1](F.conv2d(pool(x), block.downsample[0].weight))
    torch.testing.assert_close(block(x), block.relu(out + identity))


def test_basic_block_downsamples_before_conv1_and_the_projection() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    sites = replace_backbone_downsampling(model, "maxpool")
    assert sites == SEVEN_SITES
    block = model.layer3[0]
    assert isinstance(block, ResampledBasicBlock) and block.conv1.stride == (1, 1)
    x = torch.randn(1, 128, 7, 10)
    pool = torch.nn.MaxPool2d(3, 2, 1)
    out = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(pool(x))))))
    torch.testing.assert_close(block(x), block.relu(out + block.downsample(pool(x))))


def test_lip_follows_the_official_lip_resnet_bottleneck() -> None:
    """sebgao/LIP imagenet/lip_resnet.py: shared logit trunk on the block input, BottleneckLIP + 1×1 conv
    on the main branch, BottleneckLIP before the shortcut projection, SimplifiedLIP at the stem."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    replace_backbone_downsampling(model, "lip")
    assert model.maxpool.logit_net_kind == "simplified"
    block = model.layer3[0]
    assert isinstance(block, LIPBottleneck)
    assert block.conv2.kernel_size == (1, 1) and block.conv2.stride == (1, 1)  # conv2 = conv1x1(planes, planes)
    assert block.downsample[0].stride == (1, 1)
    trunk_convs = [m for m in block.lip_trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in trunk_convs] == [(512, 128, (1, 1)),
                                                                                   (128, 128, (3, 3))]
    assert block.lip_main.layers[0].out_channels == 256 and block.lip_shortcut.layers[0].out_channels == 512
    with torch.no_grad():  # non-constant logits, so the check sees the importance weighting
        block.lip_main.layers[0].weight.normal_()
        block.lip_shortcut.layers[0].weight.normal_()
    x = torch.randn(1, 512, 9, 8)
    shared = block.lip_trunk(x)
    out = block.relu(block.bn1(block.conv1(x)))
    out = lip_pool(out, block.lip_main(shared), 3, 2)
    out = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(out)))))
    identity = block.downsample(lip_pool(x, block.lip_shortcut(shared), 3, 2))
    torch.testing.assert_close(block(x), block.relu(out + identity))


def test_classifier_with_the_site_trains_a_step() -> None:
    model = build_resnet_classifier(num_classes=5, downsampler="carafe", sites={"backbone": True},
                                    backbone={"depth": 18})
    assert len(backbone_site_modules(model)) == 7
    logits = model(torch.randn(2, 3, 33, 33))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_classifier_rejects_unknown_sites() -> None:
    with pytest.raises(ValueError, match="only the 'backbone' site"):
        build_resnet_classifier(num_classes=5, sites={"fpn": True})

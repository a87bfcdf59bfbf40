"""The backbone downsampling site: where the downsampler goes, what it keeps, what it changes."""

from __future__ import annotations

import pytest
import torch
import torchvision

from carafe_exp.models.backbone_sites import replace_backbone_downsampling
from carafe_exp.models.classifier import build_resnet_classifier
from carafe_exp.resample import DOWNSAMPLERS


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


@pytest.mark.parametrize("name", sorted(DOWNSAMPLERS))
def test_every_downsampler_keeps_stage_shapes_and_parameter_names(name: str) -> None:
    torch.manual_seed(0)
    original = torchvision.models.resnet50(weights=None).eval()
    swapped = torchvision.models.resnet50(weights=None).eval()
    sites = replace_backbone_downsampling(swapped, name)
    x = torch.randn(1, 3, 67, 45)  # odd sizes: every stage must still be ceil(H/2)
    assert _stage_shapes(swapped, x) == _stage_shapes(original, x)
    if name == "conv":
        return
    assert sites == ["maxpool", "layer2.0", "layer3.0", "layer4.0"]
    original_names = set(original.state_dict())
    # Every original tensor keeps its name (torchvision checkpoints load), the new ones are extra.
    assert original_names <= set(swapped.state_dict())
    for layer in ("layer2", "layer3", "layer4"):
        block = getattr(swapped, layer)[0]
        assert block.conv2.stride == (1, 1) and block.downsample[0].stride == (1, 1)
        assert block.resample is not None


def test_shortcut_and_main_path_read_the_same_downsampled_input() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    replace_backbone_downsampling(model, "avgpool")
    block = model.layer2[0]
    x = torch.randn(2, 256, 9, 11)
    pooled = block.resample(x)
    identity = block.downsample(pooled)
    out = block.relu(block.bn1(block.conv1(pooled)))
    out = block.relu(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(out))
    expected = block.relu(out + identity)
    torch.testing.assert_close(block(x), expected)


def test_classifier_with_the_site_trains_a_step() -> None:
    model = build_resnet_classifier(num_classes=5, downsampler="maxpool", sites={"backbone": True},
                                    backbone={"depth": 18})
    logits = model(torch.randn(2, 3, 33, 33))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_classifier_rejects_unknown_sites() -> None:
    with pytest.raises(ValueError, match="only the 'backbone' site"):
        build_resnet_classifier(num_classes=5, sites={"fpn": True})

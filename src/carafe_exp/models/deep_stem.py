"""CSAIL's ResNet: torchvision's ResNet with the deep stem of semantic-segmentation-pytorch.

CSAIL's UperNet encoder (``mit_semseg/models/resnet.py``, ``ResNet``; CARAFE supplement footnote 1) is
a ResNet whose stem is three 3×3 convolutions, 3→64 (stride 2), 64→64 and 64→128, each with BN and
ReLU, then the 3×3 max-pool; ``layer1`` therefore takes 128 channels (its first block's conv1 and
shortcut are 128→…). The bottlenecks are torchvision's (stride in the 3×3 conv), so only the stem
and ``layer1.0`` differ. Parameter names are CSAIL's (``conv1``/``bn1``, ``conv2``/``bn2``,
``conv3``/``bn3``, ``layerN``, ``fc``): CSAIL's ImageNet file ``resnet50-imagenet.pth`` and the
encoder of its UperNet checkpoints load as they are.

The children are registered in forward order (stem, max-pool, layer1–4, avgpool, fc), because
torchvision's ``IntermediateLayerGetter`` (the segmentation and detection trunks) runs them in
registration order.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

STEMS = ("torchvision", "deep")
# The deep stem's output width, which layer1 (and a downsampler in place of the max-pool) takes.
DEEP_STEM_CHANNELS = 128


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class DeepStemResNet(ResNet):
    """A torchvision ResNet with CSAIL's three-convolution stem (see the module docstring)."""

    stem_channels = DEEP_STEM_CHANNELS

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        stem = OrderedDict([
            ("conv1", _conv3x3(3, 64, stride=2)), ("bn1", nn.BatchNorm2d(64)), ("relu1", nn.ReLU(inplace=True)),
            ("conv2", _conv3x3(64, 64)), ("bn2", nn.BatchNorm2d(64)), ("relu2", nn.ReLU(inplace=True)),
            ("conv3", _conv3x3(64, DEEP_STEM_CHANNELS)), ("bn3", nn.BatchNorm2d(DEEP_STEM_CHANNELS)),
            ("relu3", nn.ReLU(inplace=True)),
        ])
        self.inplanes = DEEP_STEM_CHANNELS
        layer1 = self._make_layer(block, 64, layers[0])
        # torchvision's initialisation (Kaiming-normal fan-out, BN 1/0) for the new modules; CSAIL's
        # normal(0, sqrt(2 / (k·k·out))) is the same distribution.
        for module in [*stem.values(), layer1]:
            for child in module.modules():
                if isinstance(child, nn.Conv2d):
                    nn.init.kaiming_normal_(child.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(child, nn.BatchNorm2d):
                    nn.init.ones_(child.weight)
                    nn.init.zeros_(child.bias)
        rest = [(name, self._modules[name]) for name in ("maxpool", "layer2", "layer3", "layer4", "avgpool", "fc")]
        self._modules.clear()
        for name, module in [*stem.items(), ("maxpool", rest[0][1]), ("layer1", layer1), *rest[1:]]:
            self.add_module(name, module)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def stem_channels(resnet: nn.Module) -> int:
    """Channels leaving the stem (entering the max-pool): 64 for torchvision's, 128 for the deep stem."""
    return int(getattr(resnet, "stem_channels", None) or resnet.conv1.out_channels)


__all__ = ["DEEP_STEM_CHANNELS", "STEMS", "DeepStemResNet", "stem_channels"]

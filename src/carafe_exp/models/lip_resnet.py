"""LIP-ResNet's strided bottleneck (Gao et al., ICCV 2019; official ``imagenet/lip_resnet.py``).

CARAFE++ Table III takes LIP "following its original paper" (§5.3), so the LIP row does not use
CARAFE++'s generic placement but the official LIP-ResNet block. In the first bottleneck of
layer2–4:

- ``lip_trunk`` (``BottleneckShared``: 1×1 conv C_in→128, IN, ReLU, 3×3 conv, IN, ReLU) reads the
  block's input at full resolution and feeds two logit heads;
- main branch: conv1 (1×1, full resolution), then LIP with logits from ``lip_main`` (a
  ``BottleneckLIP`` head, 128→planes) pools by 2, then **a 1×1 conv** planes→planes takes the
  place of the 3×3 conv2 (``conv2 = Sequential(BottleneckLIP(planes), conv1x1(planes, planes))``),
  then bn2, ReLU, conv3, bn3 as usual;
- shortcut: LIP with logits from ``lip_shortcut`` (128→C_in) pools the input by 2, then the 1×1
  projection (stride 1) and its BatchNorm.

Pooling windows are 3×3, stride 2, padding 1 (``lip2d``), as in :func:`carafe_exp.resample.lip.lip_pool`.
The stem max-pool becomes a ``SimplifiedLIP`` (the registry's ``lip`` at 64 channels). A
BasicBlock has no LIP-ResNet form (the official BasicBlock is commented out) and gets the generic
placement. Since conv2 changes shape, the block's conv2 is not loadable from an ImageNet ResNet:
a LIP backbone is pretrained from scratch (CARAFE++ Table III pretrains every row).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from carafe_exp.resample.lip import LIPLogitHead, LIPLogitTrunk, lip_pool
from carafe_exp.resample.registry import split_spec

LIP_NAME = "lip"
_DEFAULT_WIDTH = 128
_DEFAULT_KERNEL = 3


class LIPBottleneck(Bottleneck):
    """The official LIP-ResNet strided bottleneck (see module docstring)."""

    lip_trunk: LIPLogitTrunk
    lip_main: LIPLogitHead
    lip_shortcut: LIPLogitHead
    lip_kernel_size: int
    lip_scale: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.lip_trunk(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = lip_pool(out, self.lip_main(shared), self.lip_kernel_size, self.lip_scale)
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = lip_pool(x, self.lip_shortcut(shared), self.lip_kernel_size, self.lip_scale)
        out += self.downsample(shortcut)
        return self.relu(out)


def uses_lip_resnet_blocks(block: nn.Module, downsampler: str | Mapping[str, Any]) -> bool:
    """Whether ``block`` gets the LIP-ResNet form: a Bottleneck, with the bottleneck logit net (auto or explicit)."""
    _, params = split_spec(downsampler)
    return type(block) is Bottleneck and params.get("logit_net", "auto") in ("auto", "bottleneck")


def lip_bottleneck(block: Bottleneck, downsampler: str | Mapping[str, Any]) -> list[str]:
    """Turn a strided torchvision Bottleneck into :class:`LIPBottleneck` (in place); return the new modules."""
    _, params = split_spec(downsampler)
    width = int(params.get("bottleneck_width", _DEFAULT_WIDTH))
    in_channels, planes = int(block.conv1.in_channels), int(block.conv2.in_channels)
    conv2 = nn.Conv2d(planes, int(block.conv2.out_channels), 1, bias=False)
    nn.init.kaiming_normal_(conv2.weight, mode="fan_out", nonlinearity="relu")
    block.conv2 = conv2.to(device=block.conv1.weight.device, dtype=block.conv1.weight.dtype)
    block.downsample[0].stride = (1, 1)
    block.stride = 1
    block.__class__ = LIPBottleneck
    block.lip_kernel_size = int(params.get("kernel_size", _DEFAULT_KERNEL))
    block.lip_scale = 2
    block.add_module("lip_trunk", LIPLogitTrunk(in_channels, width))
    block.add_module("lip_main", LIPLogitHead(width, planes))
    block.add_module("lip_shortcut", LIPLogitHead(width, in_channels))
    return ["lip_main", "lip_shortcut"]


__all__ = ["LIPBottleneck", "LIP_NAME", "lip_bottleneck", "uses_lip_resnet_blocks"]

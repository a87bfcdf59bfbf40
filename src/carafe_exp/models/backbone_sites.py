"""The backbone downsampling site of CARAFE++ (§4.1): swap ResNet's stride-2 operators.

With a downsampler other than ``conv`` (the original operator), ResNet changes in four places:
- the stem max-pool becomes the downsampler (64 channels);
- the first bottleneck of layer2, layer3 and layer4 gets the downsampler at its input
  (256, 512, 1024 channels); its convolutions lose their stride and its shortcut reads the same
  downsampled input, so the block's arithmetic is otherwise unchanged.

Parameter names of the original network are kept (the downsampler adds ``resample.*`` and
``maxpool.*`` tensors), so torchvision checkpoints still load.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from carafe_exp.resample import ORIGINAL_DOWNSAMPLER, build_downsampler
from carafe_exp.resample.registry import split_spec

log = logging.getLogger(__name__)


class PreResampledBottleneck(Bottleneck):
    """A torchvision Bottleneck whose input is first downsampled by ``self.resample`` (stride 1 inside)."""

    resample: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.resample(x))


class PreResampledBasicBlock(BasicBlock):
    """A torchvision BasicBlock whose input is first downsampled by ``self.resample`` (stride 1 inside)."""

    resample: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.resample(x))


_PRE_RESAMPLED = {Bottleneck: PreResampledBottleneck, BasicBlock: PreResampledBasicBlock}


def _remove_stride(block: nn.Module) -> None:
    # Every strided operator inside the block (conv2, the shortcut's 1x1 conv, a deformable conv
    # and its offset conv) now sees the already downsampled input.
    for module in block.modules():
        stride = getattr(module, "stride", None)
        if isinstance(stride, tuple) and any(s != 1 for s in stride):
            module.stride = (1,) * len(stride)
        elif isinstance(stride, int) and stride != 1 and module is not block:
            module.stride = 1


def pre_resample_block(block: nn.Module, resampler: nn.Module) -> nn.Module:
    """Turn a strided residual block into its pre-resampled, stride-1 form (in place)."""
    cls = _PRE_RESAMPLED.get(type(block))
    if cls is None:
        raise TypeError(f"cannot put a downsampler into a {type(block).__name__}; expected a torchvision "
                        f"Bottleneck or BasicBlock")
    _remove_stride(block)
    block.stride = 1
    block.__class__ = cls  # same parameters, only the forward changes
    block.add_module("resample", resampler)
    return block


def _block_in_channels(block: nn.Module) -> int:
    return int(block.conv1.in_channels)


def replace_backbone_downsampling(resnet: ResNet, downsampler: str | Mapping[str, Any]) -> list[str]:
    """Put ``downsampler`` at ResNet's four stride-2 sites (in place); return the sites changed.

    ``downsampler`` is a registry name or a config mapping with ``name``; ``conv`` keeps the
    original network and changes nothing.
    """
    name, _ = split_spec(downsampler)
    if name == ORIGINAL_DOWNSAMPLER:
        return []
    replaced = []
    stem_channels = int(resnet.conv1.out_channels)
    resnet.maxpool = build_downsampler(downsampler, stem_channels, 2)
    replaced.append("maxpool")
    for layer_name in ("layer2", "layer3", "layer4"):
        first = getattr(resnet, layer_name)[0]
        resampler = build_downsampler(downsampler, _block_in_channels(first), 2)
        pre_resample_block(first, resampler)
        replaced.append(f"{layer_name}.0")
    log.info("backbone downsampling sites %s use downsampler %r", ", ".join(replaced), name)
    return replaced

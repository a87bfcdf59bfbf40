"""The backbone downsampling site of CARAFE++ (§4.1, Fig. 4): seven downsamplers in a ResNet.

With a downsampler other than ``conv`` (the original operator), ResNet changes in 7 places:

- the stem max-pool (Res-1) becomes the downsampler, on the stem's 64 channels;
- in the first bottleneck of layer2, layer3 and layer4 (Res-3..5) there are two:
  ``resample_main`` in the main branch, after conv1 has run at full resolution and in front of
  the 3×3 conv2, on the block's ``planes`` (conv2 input) channels; and ``resample_shortcut``
  in front of the 1×1 projection of the shortcut, on the block's input channels. Both convs
  lose their stride: "CARAFE++ downsamples the feature map before convolution layers ... and
  convolution layers with the same kernel size but no stride are applied afterwards".

A BasicBlock (ResNet-18/34) has its stride on conv1, so its main-branch downsampler goes in front
of conv1, on the block's input channels. Max/average pooling and DPP go to the same places
(CARAFE++ §5.3: "we apply these pooling methods in the same manner with CARAFE++"). LIP follows
its own paper (§5.3: "LIP is adopted following its original paper"), i.e. the official
LIP-ResNet, see :mod:`carafe_exp.models.lip_resnet`.

Parameter names of the original network are kept (the downsamplers add ``maxpool.*`` and
``layerN.0.resample_*`` tensors), so torchvision checkpoints still load into the unmodified parts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from carafe_exp.models.deep_stem import stem_channels
from carafe_exp.models.lip_resnet import LIP_NAME, lip_bottleneck, uses_lip_resnet_blocks
from carafe_exp.resample import ORIGINAL_DOWNSAMPLER, build_downsampler
from carafe_exp.resample.registry import split_spec

log = logging.getLogger(__name__)

DOWNSAMPLED_LAYERS = ("layer2", "layer3", "layer4")


class ResampledBottleneck(Bottleneck):
    """A torchvision Bottleneck whose stride-2 is done by ``resample_main`` and ``resample_shortcut`` (Fig. 4)."""

    resample_main: nn.Module
    resample_shortcut: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(self.resample_main(out))))
        out = self.bn3(self.conv3(out))
        out += self.downsample(self.resample_shortcut(x))
        return self.relu(out)


class ResampledBasicBlock(BasicBlock):
    """A torchvision BasicBlock whose stride-2 is done by ``resample_main`` (before conv1) and ``resample_shortcut``."""

    resample_main: nn.Module
    resample_shortcut: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(self.resample_main(x))))
        out = self.bn2(self.conv2(out))
        out += self.downsample(self.resample_shortcut(x))
        return self.relu(out)


def remove_stride(block: nn.Module) -> None:
    """Set every strided operator inside ``block`` (conv2 or conv1, the shortcut's 1×1 conv) to stride 1."""
    for module in block.modules():
        stride = getattr(module, "stride", None)
        if isinstance(stride, tuple) and any(s != 1 for s in stride):
            module.stride = (1,) * len(stride)
        elif isinstance(stride, int) and stride != 1 and module is not block:
            module.stride = 1
    block.stride = 1


def _resample_block(block: nn.Module, downsampler: str | Mapping[str, Any]) -> list[str]:
    """Turn a strided residual block into its two-downsampler, stride-1 form (in place); return the new modules."""
    if getattr(block, "downsample", None) is None:
        raise TypeError(f"{type(block).__name__} has no projection shortcut; a strided ResNet block always has one")
    if type(block) is Bottleneck:
        main_channels, cls = int(block.conv2.in_channels), ResampledBottleneck
    elif type(block) is BasicBlock:
        main_channels, cls = int(block.conv1.in_channels), ResampledBasicBlock
    else:
        raise TypeError(f"cannot put a downsampler into a {type(block).__name__}; expected a torchvision "
                        f"Bottleneck or BasicBlock")
    shortcut_channels = int(block.conv1.in_channels)
    # Before the downsamplers join: their own strided convs (CARAFE++'s encoder) keep their stride.
    remove_stride(block)
    block.__class__ = cls  # same parameters, only the forward changes
    site = "model.sites.backbone (a ResNet block's stride)"
    block.add_module("resample_main", build_downsampler(downsampler, main_channels, 2, site=site))
    block.add_module("resample_shortcut", build_downsampler(downsampler, shortcut_channels, 2, site=site))
    return ["resample_main", "resample_shortcut"]


def replace_backbone_downsampling(resnet: ResNet, downsampler: str | Mapping[str, Any]) -> list[str]:
    """Put ``downsampler`` at ResNet's 7 downsampling places (in place); return their module names.

    ``downsampler`` is a registry name or a config mapping with ``name``; ``conv`` keeps the
    original network and changes nothing. Works for any torchvision ResNet (Bottleneck or
    BasicBlock); the returned names are, e.g., ``maxpool``, ``layer2.0.resample_main``,
    ``layer2.0.resample_shortcut``, ...
    """
    name, _ = split_spec(downsampler)
    if name == ORIGINAL_DOWNSAMPLER:
        return []
    replaced = ["maxpool"]
    resnet.maxpool = build_downsampler(downsampler, stem_channels(resnet), 2,
                                       site="model.sites.backbone (ResNet's stem max-pool)")
    for layer_name in DOWNSAMPLED_LAYERS:
        first = getattr(resnet, layer_name)[0]
        if name == LIP_NAME and uses_lip_resnet_blocks(first, downsampler):
            added = lip_bottleneck(first, downsampler)
        else:
            added = _resample_block(first, downsampler)
        replaced += [f"{layer_name}.0.{module}" for module in added]
    log.info("backbone downsampler %r at %d places: %s", name, len(replaced), ", ".join(replaced))
    return replaced


_SITE_CHILDREN = ("resample_main", "resample_shortcut", "lip_main", "lip_shortcut")


def backbone_site_modules(resnet: ResNet) -> list[str]:
    """Names of the downsamplers a ResNet holds at its backbone site (empty for the original network)."""
    names = [] if isinstance(resnet.maxpool, nn.MaxPool2d) else ["maxpool"]
    for layer in DOWNSAMPLED_LAYERS:
        block = getattr(resnet, layer)[0]
        names += [f"{layer}.0.{child}" for child in _SITE_CHILDREN if hasattr(block, child)]
    return names


def resampled_blocks(resnet: ResNet) -> list[str]:
    """Names of the blocks whose stride the backbone site took over (``layer2.0`` ...)."""
    return sorted({name.rsplit(".", 1)[0] for name in backbone_site_modules(resnet) if name != "maxpool"})


__all__ = ["DOWNSAMPLED_LAYERS", "ResampledBasicBlock", "ResampledBottleneck", "backbone_site_modules",
           "remove_stride", "replace_backbone_downsampling", "resampled_blocks"]

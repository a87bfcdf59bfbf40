"""Modulated deformable convolution (DCNv2) for the detection backbones of CARAFE++ Table I.

mmdetection's ``dcn=dict(type='DCNv2'), stage_with_dcn=(False, True, True, True)`` replaces the
3×3 conv2 of every bottleneck in layer2–4 by mmcv's ``ModulatedDeformConv2dPack``: a plain conv
``conv_offset`` predicts 2·k² offsets and k² modulation logits (zero-initialised, so training
starts from the ordinary convolution), the mask goes through a sigmoid, and
``torchvision.ops.deform_conv2d`` does the sampling. The main weight keeps the name ``weight``
so an ImageNet ResNet checkpoint still loads into ``layerX.Y.conv2.weight``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
import torchvision
from torch import nn
from torchvision.ops import deform_conv2d


class ModulatedDeformConv2d(nn.Module):
    """DCNv2: ``deform_conv2d`` with offsets and a sigmoid mask predicted from the input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, bias: bool = False,
                 deform_groups: int = 1) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"DCNv2: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        self.padding = (padding, padding)
        self.dilation = (dilation, dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * 3 * kernel_size * kernel_size, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation, bias=True)
        # Zero offsets and a mask of sigmoid(0)=0.5 everywhere, as mmcv initialises it.
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ModulatedDeformConv2d:
        """A DCNv2 with the geometry and (copied) weights of ``conv``."""
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] \
                or conv.padding[0] != conv.padding[1] or conv.dilation[0] != conv.dilation[1]:
            raise ValueError(f"DCNv2 replaces square convolutions only, got {conv}")
        dcn = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0],
                  padding=int(conv.padding[0]), dilation=conv.dilation[0], groups=conv.groups,
                  bias=conv.bias is not None)
        with torch.no_grad():
            dcn.weight.copy_(conv.weight)
            if conv.bias is not None and dcn.bias is not None:
                dcn.bias.copy_(conv.bias)
        return dcn.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset(x)
        o1, o2, mask_logits = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=torch.sigmoid(mask_logits))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")


def apply_dcn(resnet: torchvision.models.ResNet,
              stages: Sequence[bool] = (False, True, True, True), skip_blocks: Collection[str] = ()) -> list[str]:
    """Replace conv2 (the 3×3) of every bottleneck in the stages flagged in ``stages`` by DCNv2, in place.

    Blocks named in ``skip_blocks`` (``"layer2.0"`` ...) keep their plain conv2: CARAFE++ §5.2
    replaces the *strided* DCNv2 by CARAFE++ "and a following 3x3 convolution layer without
    stride", so with the backbone site on, the first block of layer2-4 has no DCN. Returns the
    names of the replaced convolutions. Call it after any change to the strides (the DCN copies
    the conv's stride when it is made).
    """
    if len(stages) != 4:
        raise ValueError(f"dcn stages must have 4 flags (layer1..layer4), got {list(stages)}")
    replaced = []
    for index, enabled in enumerate(stages, start=1):
        if not enabled:
            continue
        layer = getattr(resnet, f"layer{index}")
        for block_index, block in enumerate(layer):
            if f"layer{index}.{block_index}" in skip_blocks:
                continue
            conv = getattr(block, "conv2", None)
            if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3):
                raise ValueError(f"DCNv2 expects bottleneck blocks with a 3x3 conv2; layer{index}.{block_index} "
                                 f"has {type(conv).__name__}")
            block.conv2 = ModulatedDeformConv2d.from_conv(conv)
            replaced.append(f"layer{index}.{block_index}.conv2")
    return replaced

"""Local importance-based pooling (LIP; Gao, Wang, Wu, ICCV 2019), a downsampler of CARAFE++ Table III.

LIP is an average pool weighted by learned importance: logits G(x) with the shape of x come
from a small conv net ending in a "soft gate" 12·sigmoid(·), and

    out = avg_pool_k,s(x · exp(G(x))) / avg_pool_k,s(exp(G(x)))        (k=3, padding 1, stride s)

Follows the official code (sebgao/LIP). Its ResNet uses two logit nets, selected here by
``logit_net``:

- ``simplified`` (LIP-ResNet's stem): 3×3 conv C→C, InstanceNorm(affine), soft gate;
- ``bottleneck`` (LIP-ResNet's strided bottlenecks): 1×1 conv C→w, IN, ReLU, 3×3 conv w→w, IN,
  ReLU, 1×1 conv w→C, IN, soft gate, with w = ``bottleneck_width`` (128 in the official code);
- ``auto`` (default): the official choice — simplified at a 64-channel stem, bottleneck on wider
  maps.

The official ``init_layer`` zeroes the last conv, so a fresh LIP is plain 3×3 average pooling
(padding excluded). Convs have no bias (they feed InstanceNorm). The bottleneck net is split
into :class:`LIPLogitTrunk` and :class:`LIPLogitHead` because LIP-ResNet shares one trunk
between the two poolings of a strided bottleneck (:mod:`carafe_exp.models.lip_resnet`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.checks import check_choice, check_odd_kernel, check_positive_int
from carafe_exp.resample.registry import register_downsampler

SOFT_GATE_SCALE = 12.0
STEM_CHANNELS = 64


class SoftGate(nn.Module):
    """12·sigmoid(x): bounded logits, so exp(logit) lies in [1, e^12]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * SOFT_GATE_SCALE


def lip_pool(x: torch.Tensor, logits: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Importance-weighted average pool of ``x`` with weights exp(``logits``); padding takes no part."""
    # The weighted mean is invariant to a constant factor in the weights: exp(logit − 12) gives the same
    # result and cannot overflow in half precision (e^12 > 65504).
    weights = torch.exp(logits - SOFT_GATE_SCALE)
    padding = kernel_size // 2
    numerator = F.avg_pool2d(x * weights, kernel_size, stride, padding)
    denominator = F.avg_pool2d(weights, kernel_size, stride, padding)
    return numerator / denominator


class LIPLogitTrunk(nn.Module):
    """The official ``BottleneckShared``: 1×1 conv C→w, IN, ReLU, 3×3 conv w→w, IN, ReLU.

    In LIP-ResNet one trunk per strided bottleneck reads the block's input and feeds the logit
    heads of both its LIP poolings (main branch and shortcut).
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False),
            nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(inplace=True),
        )
        for conv in self.layers:
            if isinstance(conv, nn.Conv2d):
                # LIP-ResNet initialises every convolution as torchvision's ResNet does.
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LIPLogitHead(nn.Module):
    """The official ``BottleneckLIP`` post-processing: 1×1 conv w→C, IN, soft gate; the conv starts at zero."""

    def __init__(self, width: int, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(width, channels, 1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
            SoftGate(),
        )
        # The official init_layer: constant logits, so a fresh LIP is plain average pooling.
        nn.init.zeros_(self.layers[0].weight)

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        return self.layers(shared)


@register_downsampler("lip")
class LocalImportancePool(nn.Module):
    """LIP with the official logit nets (see module docstring)."""

    def __init__(self, channels: int, scale: int, logit_net: str = "auto", bottleneck_width: int = 128,
                 kernel_size: int = 3) -> None:
        super().__init__()
        check_choice("lip", "logit_net", logit_net, ("auto", "simplified", "bottleneck"))
        check_positive_int("lip", "bottleneck_width", bottleneck_width)
        check_odd_kernel("lip", "kernel_size", kernel_size)
        if logit_net == "auto":
            logit_net = "simplified" if channels <= STEM_CHANNELS else "bottleneck"
        self.scale = scale
        self.kernel_size = kernel_size
        self.logit_net_kind = logit_net
        if logit_net == "simplified":
            conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            # The official init_layer zeroes it: constant logits, so LIP starts as average pooling.
            nn.init.zeros_(conv.weight)
            self.logit: nn.Module = nn.Sequential(conv, nn.InstanceNorm2d(channels, affine=True), SoftGate())
        else:
            self.logit = nn.Sequential(LIPLogitTrunk(channels, bottleneck_width),
                                       LIPLogitHead(bottleneck_width, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lip_pool(x, self.logit(x), self.kernel_size, self.scale)

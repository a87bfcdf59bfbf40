"""A2U (Dai et al., CVPR 2021, affinity-aware upsampling) as a guided ×2 upsampler.

Reassembly kernels come from the high-res guide alone (spec newer-upsamplers §5; the port the
published comparisons use, tiny-smart/detection-with-upsamplers ``upsamplers/a2u.py``, ``A2UUp``
with its fixed settings s = 3, k = 6, share = True, d = 1, group = 1). For a guide G (N, C_g, 2H, 2W):

- two data-dependent k×k filters per image, shared by all channels:
  ``U = conv1x1_{C_g→1}(adaptive_avg_pool_k×k(G))`` and ``V`` likewise;
- each channel of G filtered by them with stride 2 and padding (k−1)//2,
  giving (N, C_g, H, W) twice, each through GroupNorm(32) + LeakyReLU(0.01);
- their affinity ``A = Σ_c U_c·V_c / √C_g`` (N, 1, H, W);
- a dynamic 1×1 layer per image, ``P = conv1x1_{C_g→4k_up²}(global_avg_pool(G))``, maps A to
  4·k_up² channels; ``pixel_shuffle`` gives k_up² logits at (2H, 2W);
- kernels ``softmax_k_up²(sigmoid(logits))`` and the output ``carafe(x, K, k_up, 2)`` through the
  project's CARAFE op.

At C = 256 that is 1,024 (GroupNorms) + 9,252 (P) + 2·257 (U, V) = 10,790 parameters, so about
0.03M for the three FPN steps as the spec says. (The port's ``A2UUpRaw`` builds a second dynamic
layer whose output it never uses; ``A2UUp``, the one matching that count, does not.) Convs are
Xavier-uniform as mmdetection's FPN initialises every Conv2d inside it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp import ops
from carafe_exp.resample.checks import ResamplerArgumentError, check_odd_kernel, check_positive_int
from carafe_exp.resample.fade import check_guided_scale
from carafe_exp.resample.guided import check_guide
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.weight_init import xavier_uniform_init

GROUP_NORM_GROUPS = 32  # the port's GroupNorm(num_groups=32) on the filtered guide
SUB_PIXELS = 4


@register_upsampler("a2u")
class AffinityAwareUpsample(nn.Module):
    """A2U: kernels from the affinity of two dynamically filtered copies of the guide (module docstring).

    Config keys: k_up, filter_size, guide_channels.
    """

    requires_guide = True

    def __init__(self, channels: int, scale: int, k_up: int = 3, filter_size: int = 6,
                 guide_channels: int | None = None) -> None:
        super().__init__()
        check_guided_scale("a2u", scale)
        check_odd_kernel("a2u", "k_up", k_up)
        check_positive_int("a2u", "filter_size", filter_size)
        guide_channels = channels if guide_channels is None else guide_channels
        check_positive_int("a2u", "guide_channels", guide_channels)
        if guide_channels % GROUP_NORM_GROUPS:
            raise ResamplerArgumentError("a2u", "guide_channels", guide_channels,
                                         f"must be a multiple of {GROUP_NORM_GROUPS} (A2U's GroupNorm groups; "
                                         "it defaults to channels)")
        self.scale = scale
        self.kernel_size = k_up
        self.filter_size = filter_size
        # The port's (k−1)//2 for even k and k//2 for odd k are one formula; it maps 2H to H for every k.
        self.padding = (filter_size - 1) // 2
        self.filter_u = nn.Sequential(nn.AdaptiveAvgPool2d(filter_size), nn.Conv2d(guide_channels, 1, 1))
        self.filter_v = nn.Sequential(nn.AdaptiveAvgPool2d(filter_size), nn.Conv2d(guide_channels, 1, 1))
        self.norm_u = nn.Sequential(nn.GroupNorm(GROUP_NORM_GROUPS, guide_channels), nn.LeakyReLU())
        self.norm_v = nn.Sequential(nn.GroupNorm(GROUP_NORM_GROUPS, guide_channels), nn.LeakyReLU())
        self.dynamic_projection = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                                nn.Conv2d(guide_channels, SUB_PIXELS * k_up * k_up, 1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                xavier_uniform_init(module)

    def _filter_each_channel(self, guide: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """Every channel of image n convolved (stride 2) with image n's one k×k filter: (N, C, H, W)."""
        n, c, height, width = guide.shape
        per_channel = filters.reshape(n, 1, self.filter_size, self.filter_size).repeat_interleave(c, dim=0)
        out = F.conv2d(guide.reshape(1, n * c, height, width), per_channel, stride=2, padding=self.padding,
                       groups=n * c)
        return out.reshape(n, c, out.shape[-2], out.shape[-1])

    def kernels(self, guide: torch.Tensor) -> torch.Tensor:
        """Normalised reassembly kernels (N, k_up², 2H, 2W)."""
        n, c = guide.shape[:2]
        filtered_u = self.norm_u(self._filter_each_channel(guide, self.filter_u(guide)))
        filtered_v = self.norm_v(self._filter_each_channel(guide, self.filter_v(guide)))
        affinity = (filtered_u * filtered_v).sum(dim=1, keepdim=True) / math.sqrt(c)  # (N, 1, H, W)
        logits = affinity * self.dynamic_projection(guide)  # per-image 1×1 layer: (N, 4k², H, W)
        return F.softmax(torch.sigmoid(F.pixel_shuffle(logits, 2)), dim=1)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        guide = check_guide("a2u", x, guide, self.scale)
        return ops.carafe(x, self.kernels(guide), self.kernel_size, self.scale, groups=1)


__all__ = ["AffinityAwareUpsample"]

"""IndexNet (Lu et al., ICCV 2019 / TPAMI 2020) as a guided ×2 upsampler: learned indices from the guide.

An *index block* reads the high-res guide (N, C_g, 2H, 2W) with a stride-2 conv and predicts four
index maps per low-res pixel, one per sub-pixel position (spec newer-upsamplers §5; poppinace/
indexnet_matting ``hlindex.py``). Its decoder indices are ``idx_de = pixel_shuffle(sigmoid(z))``
and the upsampled map is ``mask ⊙ nearest_up×2(x)``.

This follows the port the published detection and segmentation comparisons were run with (the
upsampler-comparison ``IndexUp(in_channels, mode='hin')`` with ``forward(feature_en, feature_de)``,
the same interface as tiny-smart/detection-with-upsamplers' A2U; its holistic block with the
nonlinear, context form is what gives the spec's "+6.3M on FPN"), including two details of that
port:

- the mask is ``sigmoid(idx_de)``: a second sigmoid on top of the index block's, so every index
  lies in (0.5, 0.73) rather than (0, 1);
- the encoder indices ``idx_en`` (the softmax over the four positions, IndexNet's pooling side)
  are computed by the block but not used by the upsampler; they are not computed here.

``index_block`` chooses the block:

- ``holistic`` (default, ``HolisticIndexBlock``): one index map per sub-pixel shared by all
  channels. With ``nonlinear`` it is conv(C_g→2C_g, stride 2, no bias) + BN + ReLU6 +
  conv1x1(2C_g→4, no bias), otherwise one conv C_g→4; ``context`` makes the stride-2 conv 4×4
  (padding 1) instead of 2×2. The port fixes both on: 2,100,224 parameters at C = 256.
- ``o2o`` (``DepthwiseO2OIndexBlock``) / ``m2o`` (``DepthwiseM2OIndexBlock``): an index map per
  channel (C_g = C required), four branches, depthwise (one-to-one) or full (many-to-one) convs.
  The port builds them with their own defaults, so ``nonlinear``/``context`` left at ``null``
  mean: on for holistic and m2o, off for o2o.

Convs are Xavier-uniform as mmdetection's FPN initialises every Conv2d inside it; BN starts at 1/0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.checks import ResamplerArgumentError, check_choice, check_positive_int
from carafe_exp.resample.fade import check_guided_scale
from carafe_exp.resample.guided import check_guide
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.weight_init import xavier_uniform_init

INDEX_BLOCKS = ("holistic", "o2o", "m2o")
# (nonlinear, context) each block gets from the port when the config leaves them unset.
PORT_BLOCK_DEFAULTS = {"holistic": (True, True), "o2o": (False, False), "m2o": (True, True)}
SUB_PIXELS = 4  # ×2: four output positions per low-res pixel


def _index_branch(in_channels: int, hidden: int, out_channels: int, groups: int, nonlinear: bool,
                  context: bool) -> nn.Sequential:
    """Stride-2 conv of the guide (2×2, or 4×4 with context), optionally + BN + ReLU6 + 1×1 conv."""
    kernel_size, padding = (4, 1) if context else (2, 0)
    if not nonlinear:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=padding,
                                       groups=groups, bias=False))
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size, stride=2, padding=padding, groups=groups, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU6(inplace=True),
        nn.Conv2d(hidden, out_channels, 1, groups=groups, bias=False),
    )


@register_upsampler("indexnet")
class IndexNetUpsample(nn.Module):
    """IndexNet: a ×2 upsampling mask predicted from the guide, times the nearest-upsampled input.

    Config keys: index_block, nonlinear, context, guide_channels.
    """

    requires_guide = True

    def __init__(self, channels: int, scale: int, index_block: str = "holistic", nonlinear: bool | None = None,
                 context: bool | None = None, guide_channels: int | None = None) -> None:
        super().__init__()
        check_guided_scale("indexnet", scale)
        check_choice("indexnet", "index_block", index_block, INDEX_BLOCKS)
        guide_channels = channels if guide_channels is None else guide_channels
        check_positive_int("indexnet", "guide_channels", guide_channels)
        if index_block != "holistic" and guide_channels != channels:
            raise ResamplerArgumentError("indexnet", "guide_channels", guide_channels,
                                         f"must equal channels={channels} with index_block={index_block} "
                                         "(one index map per channel)")
        default_nonlinear, default_context = PORT_BLOCK_DEFAULTS[index_block]
        nonlinear = default_nonlinear if nonlinear is None else bool(nonlinear)
        context = default_context if context is None else bool(context)
        self.scale = scale
        self.index_block = index_block
        if index_block == "holistic":
            self.branches = nn.ModuleList([_index_branch(guide_channels, 2 * guide_channels, SUB_PIXELS, 1,
                                                         nonlinear, context)])
        else:
            groups = guide_channels if index_block == "o2o" else 1
            self.branches = nn.ModuleList([_index_branch(guide_channels, guide_channels, guide_channels, groups,
                                                         nonlinear, context) for _ in range(SUB_PIXELS)])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                xavier_uniform_init(module)

    def mask(self, guide: torch.Tensor) -> torch.Tensor:
        """The upsampling mask at (2H, 2W): (N, 1, 2H, 2W) holistic, (N, C, 2H, 2W) depthwise."""
        if self.index_block == "holistic":
            logits = self.branches[0](guide)  # (N, 4, H, W), sub-pixel order of pixel_shuffle
        else:
            # (N, C, 4, H, W) → (N, 4C, H, W): each channel's four sub-pixels adjacent, as pixel_shuffle reads them.
            logits = torch.stack([branch(guide) for branch in self.branches], dim=2).flatten(1, 2)
        decoder_indices = F.pixel_shuffle(torch.sigmoid(logits), 2)
        return torch.sigmoid(decoder_indices)  # the port's second sigmoid (module docstring)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        guide = check_guide("indexnet", x, guide, self.scale)
        return self.mask(guide) * F.interpolate(x, scale_factor=2, mode="nearest")


__all__ = ["INDEX_BLOCKS", "IndexNetUpsample"]

"""Mask R-CNN mask predictor whose 14×14 → 28×28 upsampling is a swappable resampler (CARAFE Table 3).

torchvision's ``MaskRCNNPredictor`` is ``conv5_mask`` (ConvTranspose2d 2×2, stride 2) + ``relu``
+ ``mask_fcn_logits`` (1×1 conv to one logit map per class); mmdetection's ``FCNMaskHead`` is the
same. With the ``mask_head`` site only ``conv5_mask`` changes (CARAFE §5.2: "we do not make any
changes to FPN, and only replace the deconvolution layer"):

- ``upsampler=deconv`` gives back exactly the original layer, a plain ``ConvTranspose2d`` named
  ``conv5_mask`` (2×2, stride 2, from ``mask_head_overrides.deconv.kernel_size``), Kaiming-normal
  (fan_out, ReLU) with zero bias, followed by the ReLU — Table 3's "Deconv" row (34.2) is the
  unmodified Mask R-CNN. The 3×3 Xavier deconv of Table 2 stays the FPN's choice;
- every other upsampler replaces the deconv and, as in ``FCNMaskHead`` (``if self.upsample_method
  == 'deconv': x = self.relu(x)``), feeds the logits directly.

The logits conv is Kaiming-normal (fan_out, ReLU) with zero bias as in mmdetection. Submodule
names stay ``conv5_mask``/``relu``/``mask_fcn_logits``, so a torchvision checkpoint loads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import nn

from carafe_exp.resample import build_upsampler
from carafe_exp.resample.learned_upsample import transposed_conv_padding
from carafe_exp.resample.registry import split_spec

DECONV = "deconv"
MASK_RCNN_DECONV_KERNEL = 2
# The mask head's parameters where they differ from the FPN's: Mask R-CNN's deconv is 2x2.
DEFAULT_MASK_HEAD_OVERRIDES: dict[str, dict[str, Any]] = {DECONV: {"kernel_size": MASK_RCNN_DECONV_KERNEL}}


def _kaiming_fan_out(module: nn.Conv2d | nn.ConvTranspose2d) -> nn.Module:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def mask_rcnn_deconv(channels: int, kernel_size: int = MASK_RCNN_DECONV_KERNEL, scale: int = 2) -> nn.ConvTranspose2d:
    """Mask R-CNN's upsampling layer: ConvTranspose2d C→C, stride 2, Kaiming-normal (fan_out), zero bias."""
    padding, output_padding = transposed_conv_padding(kernel_size, scale)
    deconv = nn.ConvTranspose2d(channels, channels, kernel_size, stride=scale, padding=padding,
                                output_padding=output_padding)
    return _kaiming_fan_out(deconv)


class ResampledMaskPredictor(nn.Sequential):
    """``upsampler (×2) → [ReLU if deconv] → 1×1 conv`` giving (R, num_classes, 28, 28) from (R, C, 14, 14)."""

    def __init__(self, in_channels: int, num_classes: int, upsampler: str | Mapping[str, Any]) -> None:
        name, params = split_spec(upsampler)
        if name == DECONV:
            upsample: nn.Module = mask_rcnn_deconv(in_channels, int(params.get("kernel_size",
                                                                                MASK_RCNN_DECONV_KERNEL)))
        else:
            upsample = build_upsampler(upsampler, in_channels, 2, site="model.sites.mask_head (Mask R-CNN mask head)")
        logits = _kaiming_fan_out(nn.Conv2d(in_channels, num_classes, 1, 1, 0))
        super().__init__(OrderedDict([
            ("conv5_mask", upsample),
            ("relu", nn.ReLU(inplace=True) if name == DECONV else nn.Identity()),
            ("mask_fcn_logits", logits),
        ]))


def mask_head_upsampler_spec(upsampler: str | Mapping[str, Any],
                             overrides: Mapping[str, Mapping[str, Any]] | None) -> str | dict[str, Any]:
    """The upsampler spec for the mask head: ``overrides[name]`` merged onto ``upsampler``.

    The mask head's deconv is Mask R-CNN's 2×2 while the FPN's is Table 2's 3×3; overrides keyed
    by upsampler name (``{deconv: {kernel_size: 2}}``) express that without touching the others.
    """
    name, params = split_spec(upsampler)
    extra = dict((overrides or {}).get(name, {}) or {})
    if not extra:
        return upsampler if isinstance(upsampler, str) else {"name": name, **params}
    return {"name": name, **params, **extra}


__all__ = ["DEFAULT_MASK_HEAD_OVERRIDES", "MASK_RCNN_DECONV_KERNEL", "ResampledMaskPredictor", "mask_head_upsampler_spec",
           "mask_rcnn_deconv"]

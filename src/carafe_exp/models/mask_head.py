"""Mask R-CNN mask predictor whose 14×14 → 28×28 upsampling is a swappable resampler (CARAFE Table 3).

torchvision's ``MaskRCNNPredictor`` is ``conv5_mask`` (ConvTranspose2d 2×2, stride 2) + ``relu``
+ ``mask_fcn_logits`` (1×1 conv to one logit map per class). With the ``mask_head`` site the
first two are replaced by the chosen upsampler (channels 256, scale 2). As in mmdetection's
``FCNMaskHead`` (``if self.upsample_method == 'deconv': x = self.relu(x)``) the ReLU follows a
deconvolution only; CARAFE and the interpolations feed the logits directly. The submodule names
stay ``conv5_mask``/``relu``/``mask_fcn_logits``, so ``mask_fcn_logits`` of a torchvision
checkpoint still loads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import nn

from carafe_exp.resample import build_upsampler
from carafe_exp.resample.registry import split_spec

# Upsamplers that are learned linear maps, after which mmdetection keeps the ReLU.
_RELU_AFTER = frozenset({"deconv"})


class ResampledMaskPredictor(nn.Sequential):
    """``upsampler (×2) → [ReLU if deconv] → 1×1 conv`` giving (R, num_classes, 28, 28) from (R, C, 14, 14)."""

    def __init__(self, in_channels: int, num_classes: int, upsampler: str | Mapping[str, Any]) -> None:
        name, _ = split_spec(upsampler)
        logits = nn.Conv2d(in_channels, num_classes, 1, 1, 0)
        nn.init.kaiming_normal_(logits.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(OrderedDict([
            ("conv5_mask", build_upsampler(upsampler, in_channels, 2)),
            ("relu", nn.ReLU(inplace=True) if name in _RELU_AFTER else nn.Identity()),
            ("mask_fcn_logits", logits),
        ]))


def mask_head_upsampler_spec(upsampler: str | Mapping[str, Any],
                             overrides: Mapping[str, Mapping[str, Any]] | None) -> str | dict[str, Any]:
    """The upsampler spec for the mask head: ``overrides[name]`` merged onto ``upsampler``.

    mmdetection's CARAFE Mask R-CNN uses ``up_kernel=3`` in the mask head but 5 in the FPN; the
    overrides keyed by upsampler name express that without breaking other upsamplers.
    """
    name, params = split_spec(upsampler)
    extra = dict((overrides or {}).get(name, {}) or {})
    if not extra:
        return upsampler if isinstance(upsampler, str) else {"name": name, **params}
    return {"name": name, **params, **extra}


__all__ = ["ResampledMaskPredictor", "mask_head_upsampler_spec"]

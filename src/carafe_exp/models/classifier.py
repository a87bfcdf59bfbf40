"""The ResNet classifier of the classification task, with the backbone downsampling site."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torchvision.models import ResNet

from carafe_exp.models.backbone_sites import replace_backbone_downsampling
from carafe_exp.models.resnet import build_resnet
from carafe_exp.resample import ORIGINAL_DOWNSAMPLER
from carafe_exp.resample.registry import split_spec

log = logging.getLogger(__name__)


def build_resnet_classifier(num_classes: int, upsampler: str | Mapping[str, Any] | None = None,
                            downsampler: str | Mapping[str, Any] = ORIGINAL_DOWNSAMPLER,
                            sites: Mapping[str, bool] | None = None,
                            backbone: Mapping[str, Any] | None = None) -> ResNet:
    """ResNet-``backbone.depth`` for ``num_classes`` with ``downsampler`` at the backbone site if enabled.

    ``upsampler`` is accepted for a uniform model-builder signature; a classifier has no upsampling site.
    """
    sites = dict(sites or {})
    unknown = sorted(set(sites) - {"backbone"})
    if unknown:
        raise ValueError(f"resnet classifier has only the 'backbone' site, got {unknown}")
    backbone = dict(backbone or {})
    model = build_resnet(depth=int(backbone.get("depth", 50)), weights=backbone.get("weights"),
                         num_classes=num_classes, allow_download=bool(backbone.get("allow_download", False)))
    name, _ = split_spec(downsampler)
    if sites.get("backbone", False):
        replace_backbone_downsampling(model, downsampler)
    elif name != ORIGINAL_DOWNSAMPLER:
        log.warning("downsampler=%s is not used: model.sites.backbone is false", name)
    if upsampler is not None and split_spec(upsampler)[0] != "nearest":
        log.warning("upsampler=%s is not used: a ResNet classifier has no upsampling site", split_spec(upsampler)[0])
    return model

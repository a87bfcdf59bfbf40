"""The ResNet classifier of the classification task, with the backbone downsampling site."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torchvision.models import ResNet

from carafe_exp.errors import ConfigError
from carafe_exp.models.resnet import build_resnet
from carafe_exp.resample import ORIGINAL_DOWNSAMPLER
from carafe_exp.resample.registry import split_spec

log = logging.getLogger(__name__)


def build_resnet_classifier(num_classes: int, upsampler: str | Mapping[str, Any] | None = None,
                            downsampler: str | Mapping[str, Any] = ORIGINAL_DOWNSAMPLER,
                            sites: Mapping[str, bool] | None = None,
                            backbone: Mapping[str, Any] | None = None) -> ResNet:
    """ResNet-``backbone.depth`` for ``num_classes`` with ``downsampler`` at the backbone site if enabled.

    ``backbone`` holds depth, weights, allow_download, strict and zero_init_residual (see
    :func:`~carafe_exp.models.resnet.build_resnet`; the network is modified before the weights load).
    ``upsampler`` is accepted for a uniform model-builder signature; a classifier has no upsampling site.
    """
    sites = dict(sites or {})
    unknown = sorted(set(sites) - {"backbone"})
    if unknown:
        raise ConfigError(f"resnet classifier has only the 'backbone' site, got {unknown}")
    backbone = dict(backbone or {})
    allowed = ("depth", "weights", "allow_download", "strict", "zero_init_residual")
    unknown = sorted(set(backbone) - set(allowed))
    if unknown:
        raise ConfigError(f"model.backbone got unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
    name, _ = split_spec(downsampler)
    site_on = bool(sites.get("backbone", False))
    model = build_resnet(depth=int(backbone.get("depth", 50)), weights=backbone.get("weights"),
                         num_classes=num_classes, allow_download=bool(backbone.get("allow_download", False)),
                         downsampler=downsampler if site_on else None, strict=bool(backbone.get("strict", True)),
                         zero_init_residual=bool(backbone.get("zero_init_residual", False)))
    if not site_on and name != ORIGINAL_DOWNSAMPLER:
        log.warning("downsampler=%s is not used: model.sites.backbone is false", name)
    if upsampler is not None and split_spec(upsampler)[0] != "nearest":
        log.warning("upsampler=%s is not used: a ResNet classifier has no upsampling site", split_spec(upsampler)[0])
    return model

"""torchvision ResNets with the CARAFE++ backbone downsamplers, then pretrained weights.

The order matters: the network is modified first (the downsampler at the backbone site, see
:mod:`carafe_exp.models.backbone_sites`) and the weights are loaded after, so a backbone
pretrained with its downsamplers (CARAFE++ §5.2: every CARAFE++ detection and segmentation
table starts from one) keeps every resampler tensor, BatchNorm statistics included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torchvision
from torch import nn
from torchvision.models import ResNet

from carafe_exp.errors import ConfigError
from carafe_exp.models.backbone_sites import replace_backbone_downsampling
from carafe_exp.models.deep_stem import STEMS, DeepStemResNet
from carafe_exp.models.pretrained import (
    load_pretrained,
    load_state_dict_file,
    looks_like_path,
    torchvision_state_dict,
)
from carafe_exp.models.run_checkpoint import BackboneSetting, locate_checkpoint

log = logging.getLogger(__name__)

RESNET_DEPTHS = (18, 34, 50, 101, 152)


def build_resnet(depth: int = 50, weights: str | None = None, num_classes: int = 1000,
                 allow_download: bool = False, downsampler: str | Mapping[str, Any] | None = None,
                 strict: bool = True, zero_init_residual: bool = False, stem: str = "torchvision") -> ResNet:
    """A torchvision ``resnet<depth>`` with ``num_classes`` outputs, ``downsampler`` at its backbone site.

    ``downsampler``: None or ``conv`` keeps the original network; any other downsampler (a
    registry name or a config mapping) goes to the 7 places of CARAFE++ §4.1.

    ``weights``: None (torchvision's random init); a torchvision weights name such as
    ``IMAGENET1K_V1`` (read from the torch hub cache; downloaded only with ``allow_download``);
    a state-dict file or Lightning ``.ckpt`` (e.g. of ``task=classification``); a run directory
    (its ``checkpoints/last.ckpt``); or a sweep directory, from which the run trained with this
    very backbone (depth and downsampler) is taken.

    Every tensor must load, except a classifier head of another size, which keeps its fresh
    initialisation; ``strict=False`` loads what fits and logs the rest.

    ``stem``: ``torchvision`` (7×7 convolution) or ``deep`` (CSAIL's three 3×3 convolutions,
    :mod:`carafe_exp.models.deep_stem`; torchvision's weight names do not fit it, CSAIL's
    ``resnet<depth>-imagenet.pth`` does).

    ``zero_init_residual``: the last BatchNorm of every residual branch starts with γ = 0 (Goyal
    et al. 2017 §5.1), after the downsamplers are in, so modified blocks get it too.
    """
    if depth not in RESNET_DEPTHS:
        raise ConfigError(f"model.backbone.depth={depth} is not a ResNet depth; choose one of {RESNET_DEPTHS}")
    if stem not in STEMS:
        raise ConfigError(f"model.backbone.stem={stem!r} is not a ResNet stem; choose one of {list(STEMS)}")
    arch = f"resnet{depth}"
    if stem == "deep":
        reference: ResNet = getattr(torchvision.models, arch)(weights=None)
        block = type(reference.layer1[0])
        model: ResNet = DeepStemResNet(block, [len(getattr(reference, f"layer{i}")) for i in range(1, 5)],
                                       num_classes=num_classes)
        if weights and not looks_like_path(str(weights)):
            raise ConfigError(f"model.backbone.weights={weights}: torchvision's weights have a 7x7 stem and do not "
                              f"fit model.backbone.stem=deep; give CSAIL's {arch}-imagenet.pth (or a run) instead")
    else:
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if downsampler is not None:
        replace_backbone_downsampling(model, downsampler)
    if zero_init_residual:
        zero_init_last_norms(model)
    if weights:
        weights = str(weights)
        if not looks_like_path(weights):
            state = torchvision_state_dict(arch, weights, allow_download)
        elif Path(weights).expanduser().is_dir():
            checkpoint = locate_checkpoint(weights, BackboneSetting.of(depth, downsampler), strict=strict)
            log.info("%s weights from %s", arch, checkpoint)
            state = load_state_dict_file(checkpoint)
        else:
            state = load_state_dict_file(weights)
        load_pretrained(model, state, what=f"{arch} weights {weights}", strict=strict)
    return model


def zero_init_last_norms(model: ResNet) -> None:
    """γ = 0 in the last BatchNorm of each residual branch (``bn3`` of a bottleneck, ``bn2`` of a basic block).

    Each block then starts as the identity, which Goyal et al. found to ease large-batch training.
    torchvision's own ``zero_init_residual`` runs before the backbone site replaces blocks; this
    runs after.
    """
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            last_norm = getattr(block, "bn3", None) or getattr(block, "bn2", None)
            if not isinstance(last_norm, nn.BatchNorm2d):
                raise ConfigError(f"zero_init_residual: {type(block).__name__} has no last BatchNorm (bn3/bn2)")
            nn.init.zeros_(last_norm.weight)


__all__ = ["RESNET_DEPTHS", "build_resnet", "zero_init_last_norms"]

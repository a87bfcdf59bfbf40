"""torchvision ResNet-50/101, optionally with pretrained weights from the local cache or a file."""

from __future__ import annotations

import torchvision
from torchvision.models import ResNet

from carafe_exp.errors import ConfigError
from carafe_exp.models.pretrained import load_matching, resolve_weights

RESNET_DEPTHS = (18, 34, 50, 101, 152)


def build_resnet(depth: int = 50, weights: str | None = None, num_classes: int = 1000,
                 allow_download: bool = False) -> ResNet:
    """A torchvision ``resnet<depth>`` with ``num_classes`` outputs.

    ``weights``: None (random init, torchvision's), a torchvision weights name such as
    ``IMAGENET1K_V1`` / ``DEFAULT`` (read from the torch hub cache; downloaded only with
    ``allow_download``), or a local checkpoint path. A classifier head of another size keeps its
    fresh initialisation.
    """
    if depth not in RESNET_DEPTHS:
        raise ConfigError(f"model.backbone.depth={depth} is not a ResNet depth; choose one of {RESNET_DEPTHS}")
    arch = f"resnet{depth}"
    model: ResNet = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if weights:
        load_matching(model, resolve_weights(arch, str(weights), allow_download), what=f"{arch} weights {weights}")
    return model

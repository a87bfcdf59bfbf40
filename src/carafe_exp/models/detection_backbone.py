"""ResNet(-DCNv2)-FPN backbone of the R-CNN detectors, with the backbone and FPN resampling sites.

The module is torchvision's ``BackboneWithFPN`` (``body`` = the ResNet trunk returning
layer1–4, ``fpn`` = :class:`~carafe_exp.models.fpn.ResampledFPN`), so parameter names are
``backbone.body.*`` / ``backbone.fpn.*`` exactly as in torchvision's detection checkpoints.

Training regime of the backbone (mmdetection's R-50 defaults, used by the CARAFE papers):
``frozen_stages=1`` freezes the stem and layer1, ``norm_eval=True`` keeps every BatchNorm in
eval mode (running statistics frozen, affine parameters trained). Both only make sense for a
pretrained trunk: a randomly initialised backbone is trained whole with live BatchNorm, as
torchvision does when no weights are given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from carafe_exp.errors import ConfigError
from carafe_exp.models.backbone_sites import backbone_site_modules, resampled_blocks
from carafe_exp.models.dcn import apply_dcn
from carafe_exp.models.fpn import ResampledFPN, fpn_of_style
from carafe_exp.models.resnet import build_resnet

log = logging.getLogger(__name__)

FPN_CHANNELS = 256


class DetectionBackbone(BackboneWithFPN):
    """``BackboneWithFPN`` with mmdetection's ``frozen_stages`` and ``norm_eval`` training behaviour."""

    def __init__(self, body: nn.Module, fpn: ResampledFPN, frozen_stages: int = -1, norm_eval: bool = False) -> None:
        return_layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
        in_channels = [int(getattr(body, f"layer{i}")[-1].conv3.out_channels) for i in range(1, 5)]
        super().__init__(body, return_layers, in_channels, FPN_CHANNELS)
        self.fpn = fpn  # replaces torchvision's plain FPN; same parameter names
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze()
        # Lightning never calls .train() (it saves and restores each module's mode around
        # evaluation), so the frozen parts must already be in eval mode when the model is built.
        self.train(self.training)

    @property
    def size_divisor(self) -> int:
        return self.fpn.size_divisor

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules: list[nn.Module] = [self.body.conv1, self.body.bn1]
        modules += [getattr(self.body, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return modules

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> DetectionBackbone:
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.body.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self


def build_detection_backbone(depth: int = 50, weights: str | None = None, dcn: bool = False,
                             frozen_stages: int = 1, norm_eval: bool = True, allow_download: bool = False,
                             fpn_upsampler: str | Mapping[str, Any] = "nearest",
                             backbone_downsampler: str | Mapping[str, Any] | None = None,
                             fpn_style: str = "fpn_carafe",
                             strict: bool = True) -> tuple[DetectionBackbone, dict[str, list[str]]]:
    """ResNet-``depth`` (± DCNv2 in layer2–4) + FPN; returns the backbone and the resampling sites used.

    ``backbone_downsampler`` (None: keep the strided convs) goes to the ResNet's 7 downsampling
    places, before ``weights`` load (:func:`~carafe_exp.models.resnet.build_resnet`, with
    ``strict``); ``fpn_upsampler`` does every top-down ×2 step of the FPN of ``fpn_style``
    (``fpn_carafe``: mmdetection's FPN_CARAFE; ``torchvision``).
    """
    if depth not in (50, 101, 152):
        raise ConfigError(f"model.backbone.depth={depth}: the R-CNN backbones are bottleneck ResNets (50, 101, 152)")
    if not -1 <= frozen_stages <= 4:
        raise ConfigError(f"model.backbone.frozen_stages={frozen_stages} must be in -1..4")
    body = build_resnet(depth=depth, weights=weights, allow_download=allow_download,
                        downsampler=backbone_downsampler, strict=strict)
    if not weights and (frozen_stages >= 0 or norm_eval):
        log.info("backbone has no pretrained weights: training it whole with live BatchNorm "
                 "(frozen_stages and norm_eval apply to pretrained backbones only)")
        frozen_stages, norm_eval = -1, False
    # The classifier head is not part of a detector.
    body.fc = nn.Identity()
    body.avgpool = nn.Identity()
    sites: dict[str, list[str]] = {}
    if backbone_downsampler is not None:
        sites["backbone"] = backbone_site_modules(body)
    if dcn:
        # CARAFE++ §5.2: the strided DCNv2 becomes the downsampler and a plain stride-1 3x3 conv.
        replaced = apply_dcn(body, (False, True, True, True), skip_blocks=resampled_blocks(body))
        log.info("DCNv2 in %d convs of layer2-4", len(replaced))
    in_channels = [int(getattr(body, f"layer{i}")[-1].conv3.out_channels) for i in range(1, 5)]
    fpn = fpn_of_style(fpn_style, in_channels, FPN_CHANNELS, upsampler=fpn_upsampler)
    sites["fpn"] = [f"fpn.upsamplers.{i}" for i in range(len(fpn.upsamplers))]
    return DetectionBackbone(body, fpn, frozen_stages=frozen_stages, norm_eval=norm_eval), sites


__all__ = ["DetectionBackbone", "FPN_CHANNELS", "build_detection_backbone"]

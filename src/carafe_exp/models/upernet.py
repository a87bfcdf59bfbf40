"""UperNet (Xiao et al. 2018) on a torchvision ResNet, with the resampling sites of CARAFE / CARAFE++.

The structure is CSAIL's ``upernet`` decoder (semantic-segmentation-pytorch, models/models.py),
which the CARAFE supplement names as the implementation the papers used — not
mmsegmentation's UPerHead, which differs in ways that move the numbers:

- PPM on C5 (:mod:`carafe_exp.models.pyramid_pooling`), its output is P5 (no output conv);
- FPN: lateral 1×1 conv + BN + ReLU on C2–C4 only; top-down f = lateral + bilinear(f) with
  align_corners=False; the *pre-conv* sum travels down, and each level gets a 3×3 conv + BN + ReLU;
- FUSE (:mod:`carafe_exp.models.feature_fusion`) of [P2, P3, P4, P5] at 1/4 resolution, then a
  3×3 conv (4C → C) + BN + ReLU and a 1×1 classifier; C = 512, no dropout, no auxiliary head;
- decoder initialisation: Kaiming-normal convolutions, BN γ = 1, β = 1e-4.

Sites (CARAFE §4.2, CARAFE++ §4.1–4.2; the P/F/U/B columns of CARAFE Table 6 / CARAFE++ Table IX):
``ppm``, ``fpn``, ``fuse`` take the chosen ×2 upsampler, ``backbone`` the chosen downsampler at
ResNet's 7 downsampling places (``build_resnet``, as for detection and classification, so a
classification checkpoint with the same downsampler loads). A site that is off keeps UperNet's
own operator; so does an on site when the upsampler is bilinear (align_corners=False) and
``bilinear_is_original`` holds, because that *is* UperNet's operator — ``upsampler=bilinear``
with every site on is the paper's UperNet baseline.

Options following CSAIL's code rather than torchvision's: ``backbone.stem=deep`` (CSAIL's ResNet,
:mod:`carafe_exp.models.deep_stem`), ``bn_stats=csail`` (its SyncBN statistics,
:mod:`carafe_exp.models.csail_batchnorm`), ``resampler_init=csail`` (its decoder initialisation
applied to the resamplers too).

The model returns class logits at 1/4 of the input resolution (``"out"``) and, when built with
``aux_head`` and in training mode, mmsegmentation's auxiliary FCN logits on C4 (``"aux"``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from carafe_exp.errors import ConfigError
from carafe_exp.models.csail_batchnorm import BN_STATS, use_bn_stats
from carafe_exp.models.feature_fusion import FeatureFusion
from carafe_exp.models.pyramid_pooling import PAPER_POOL_SCALES, PyramidPooling
from carafe_exp.models.resnet import build_resnet
from carafe_exp.models.upernet_blocks import ConvBNReLU, crop_to, csail_init, resize_bilinear
from carafe_exp.resample import DOWNSAMPLERS, ORIGINAL_DOWNSAMPLER, build_upsampler
from carafe_exp.resample.guided import upsample_with_guide
from carafe_exp.resample.registry import split_spec

log = logging.getLogger(__name__)

UPERNET_SITES = ("ppm", "fpn", "fuse", "backbone")
UPSAMPLING_SITES = ("ppm", "fpn", "fuse")
# How the resamplers at the decoder's sites are initialised (the papers do not say).
RESAMPLER_INITS = ("own", "csail")
# CSAIL's `upernet` decoder width (`upernet_lite` is the 256 version).
PAPER_CHANNELS = 512
# The input is padded to a multiple of this so that every ×2 step of the decoder is exact.
SIZE_DIVISOR = 32


class UperNetHead(nn.Module):
    """PPM + FPN + FUSE + classifier over backbone features C2–C5 (CSAIL's ``UPerNet`` decoder)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = PAPER_CHANNELS,
                 pool_scales: Sequence[int] = PAPER_POOL_SCALES, ppm_conv_first: bool = False,
                 ppm_upsampler: str | Mapping[str, Any] | None = None,
                 fpn_upsampler: str | Mapping[str, Any] | None = None,
                 fuse_upsampler: str | Mapping[str, Any] | None = None, resampler_init: str = "own") -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, upsampler=ppm_upsampler,
                                  conv_first=ppm_conv_first)
        # Laterals and output convs for C2..C4 only: the top level (P5) is the PPM output itself.
        self.fpn_in = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_out = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        # fpn_upsamplers[i] takes the top-down map of level i+1 to level i.
        # A guided upsampler gets the target level's lateral (before the add) as its guide.
        self.fpn_upsamplers = None if fpn_upsampler is None else nn.ModuleList(
            build_upsampler(fpn_upsampler, channels, 2, guide_available=True,
                            site=f"model.sites.fpn (UperNet FPN step P{i + 3}→P{i + 2})")
            for i in range(len(in_channels) - 1))
        self.fuse = FeatureFusion(channels, len(in_channels), upsampler=fuse_upsampler)
        self.conv_last = nn.Sequential(ConvBNReLU(len(in_channels) * channels, channels, 3),
                                       nn.Conv2d(channels, num_classes, 1))
        if resampler_init not in RESAMPLER_INITS:
            raise ConfigError(f"model.resampler_init must be one of {list(RESAMPLER_INITS)}, got {resampler_init!r}")
        # own: the resamplers keep their own initialisation; csail: CSAIL's build_decoder covers them too.
        csail_init(self, skip=self.resamplers() if resampler_init == "own" else ())

    def resamplers(self) -> list[nn.Module]:
        """Every upsampler module at the decoder's sites."""
        groups = (self.ppm.upsamplers, self.fpn_upsamplers, self.fuse.upsamplers)
        return [module for group in groups if group is not None for module in group]

    def _top_down(self, f: torch.Tensor, level: int, lateral: torch.Tensor) -> torch.Tensor:
        size = lateral.shape[-2:]
        if self.fpn_upsamplers is None:
            return resize_bilinear(f, size)
        return crop_to(upsample_with_guide(self.fpn_upsamplers[level], f, lateral), size)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f = self.ppm(features[-1])
        pyramid = [f]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.fpn_in[i](features[i])
            f = lateral + self._top_down(f, i, lateral)
            pyramid.append(self.fpn_out[i](f))
        pyramid.reverse()  # [P2, P3, P4, P5]
        return self.conv_last(self.fuse(pyramid))


class FCNAuxHead(nn.Module):
    """mmsegmentation's auxiliary FCNHead on C4: 3×3 conv + BN + ReLU, dropout, 1×1 classifier.

    Initialised as mmsegmentation does: Kaiming-normal conv (fan-out, mmcv's ``kaiming_init``), BN γ 1 β 0,
    classifier N(0, 0.01) with zero bias.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        # mmcv ConvModule.init_weights → kaiming_init, whose default mode is fan_out.
        nn.init.kaiming_normal_(self.conv[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, c4: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(c4)))


class UperNet(nn.Module):
    """ResNet backbone (C2–C5) + :class:`UperNetHead` (+ optional :class:`FCNAuxHead`)."""

    size_divisor = SIZE_DIVISOR

    def __init__(self, backbone: nn.Module, head: UperNetHead, aux_head: FCNAuxHead | None = None,
                 sites: Mapping[str, list[str]] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = head
        self.aux_head = aux_head
        # Which modules each resampling site holds (for logs, tests and benchmarks).
        self.sites = dict(sites or {})

    @property
    def num_classes(self) -> int:
        return int(self.decode_head.conv_last[-1].out_channels)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = list(self.backbone(images).values())
        outputs = {"out": self.decode_head(features)}
        if self.aux_head is not None and self.training:
            outputs["aux"] = self.aux_head(features[-2])
        return outputs


def _site_upsampler(spec: str | Mapping[str, Any], enabled: bool,
                    bilinear_is_original: bool) -> str | Mapping[str, Any] | None:
    """The upsampler config for an up site, or None where the site keeps UperNet's own resize."""
    if not enabled:
        return None
    name, params = split_spec(spec)
    if bilinear_is_original and name == "bilinear" and not params.get("align_corners", False):
        return None
    return spec


def _resnet_features(depth: int, weights: str | None, allow_download: bool, strict: bool,
                     downsampler: str | Mapping[str, Any] | None, stem: str = "torchvision") -> tuple[nn.Module, list[int]]:
    # Built with its downsamplers, then loaded: a backbone pretrained with them keeps every tensor.
    resnet = build_resnet(depth=depth, weights=weights, allow_download=allow_download, downsampler=downsampler,
                          strict=strict, stem=stem)
    # The classifier head is not part of a segmentation network.
    return_layers = OrderedDict((f"layer{i}", f"c{i + 1}") for i in range(1, 5))
    body = IntermediateLayerGetter(resnet, return_layers=return_layers)
    widths = []
    for i in range(1, 5):
        last_block = getattr(resnet, f"layer{i}")[-1]
        last_conv = last_block.conv3 if hasattr(last_block, "conv3") else last_block.conv2
        widths.append(int(last_conv.out_channels))
    return body, widths


def build_upernet(num_classes: int, upsampler: str | Mapping[str, Any] = "bilinear",
                  downsampler: str | Mapping[str, Any] = ORIGINAL_DOWNSAMPLER,
                  sites: Mapping[str, bool] | None = None, backbone: Mapping[str, Any] | None = None,
                  channels: int = PAPER_CHANNELS, pool_scales: Sequence[int] = PAPER_POOL_SCALES,
                  ppm_conv_first: bool = False, bilinear_is_original: bool = True,
                  aux_head: bool = False, aux_channels: int = 256, aux_dropout: float = 0.1,
                  bn_stats: str = "torch", resampler_init: str = "own") -> UperNet:
    """UperNet R-``backbone.depth`` for ``num_classes`` with the resamplers at the enabled ``sites``.

    ``sites``: ``ppm``, ``fpn``, ``fuse`` (the upsampler), ``backbone`` (the downsampler; ``conv``
    keeps ResNet's strided convolutions). ``backbone``: ``depth`` (18–152), ``weights`` (as
    :func:`~carafe_exp.models.resnet.build_resnet`), ``allow_download``, ``strict``, ``stem``
    (``torchvision`` or CSAIL's ``deep`` stem, :mod:`carafe_exp.models.deep_stem`).

    ``bn_stats``: ``torch`` (PyTorch's BatchNorm statistics) or ``csail`` (CSAIL's SyncBN running
    average, :mod:`carafe_exp.models.csail_batchnorm`), for every BatchNorm of the network.
    ``resampler_init``: ``own`` (the resamplers keep their initialisation) or ``csail`` (CSAIL's
    decoder initialisation covers them too).
    """
    if bn_stats not in BN_STATS:
        raise ConfigError(f"model.bn_stats must be one of {list(BN_STATS)}, got {bn_stats!r}")
    if int(num_classes) < 1:
        raise ConfigError(f"UperNet needs num_classes >= 1, got {num_classes}")
    sites = {name: bool(value) for name, value in dict(sites or {}).items()}
    unknown = sorted(set(sites) - set(UPERNET_SITES))
    if unknown:
        raise ConfigError(f"model.sites: upernet has no site(s) {unknown}; its sites are {list(UPERNET_SITES)}")
    if int(channels) < 1:
        raise ConfigError(f"model.channels must be >= 1, got {channels}")
    if not pool_scales or any(int(scale) < 1 for scale in pool_scales):
        raise ConfigError(f"model.pool_scales must be a non-empty list of positive ints (the paper's: "
                          f"{list(PAPER_POOL_SCALES)}), got {list(pool_scales)}")
    backbone = dict(backbone or {})
    depth = int(backbone.get("depth", 50))

    down_name, _ = split_spec(downsampler)
    use_downsampler = sites.get("backbone", False) and down_name != ORIGINAL_DOWNSAMPLER
    if down_name != ORIGINAL_DOWNSAMPLER and not sites.get("backbone", False):
        log.warning("downsampler=%s is not used: model.sites.backbone is false", down_name)
    body, widths = _resnet_features(depth, backbone.get("weights"), bool(backbone.get("allow_download", False)),
                                    bool(backbone.get("strict", True)), downsampler if use_downsampler else None,
                                    stem=str(backbone.get("stem", "torchvision")))

    up = {site: _site_upsampler(upsampler, sites.get(site, False), bilinear_is_original)
          for site in UPSAMPLING_SITES}
    head = UperNetHead(widths, int(num_classes), channels=int(channels), pool_scales=pool_scales,
                       ppm_conv_first=ppm_conv_first, ppm_upsampler=up["ppm"], fpn_upsampler=up["fpn"],
                       fuse_upsampler=up["fuse"], resampler_init=resampler_init)
    aux = None
    if aux_head:
        aux = FCNAuxHead(widths[-2], int(num_classes), channels=int(aux_channels), dropout=float(aux_dropout))

    downsampler_types = tuple(DOWNSAMPLERS.values())
    site_modules = {
        "ppm": [f"decode_head.ppm.upsamplers.{i}" for i in range(len(head.ppm.upsamplers or ()))],
        "fpn": [f"decode_head.fpn_upsamplers.{i}" for i in range(len(head.fpn_upsamplers or ()))],
        "fuse": [f"decode_head.fuse.upsamplers.{i}" for i in range(len(head.fuse.upsamplers or ()))],
        "backbone": [f"backbone.{name}" for name, module in body.named_modules()
                     if isinstance(module, downsampler_types)],
    }
    in_use = {site: names for site, names in site_modules.items() if names}
    log.info("UperNet R-%d: resampling sites in use: %s", depth,
             ", ".join(f"{site} ({len(names)})" for site, names in in_use.items()) or "none (the original UperNet)")
    model = UperNet(body, head, aux, sites=site_modules)
    # After the backbone weights loaded: the average starts from the pretrained statistics.
    use_bn_stats(model, bn_stats)
    return model


__all__ = ["FCNAuxHead", "PAPER_CHANNELS", "RESAMPLER_INITS", "SIZE_DIVISOR", "UPERNET_SITES", "UperNet", "UperNetHead",
           "build_upernet"]

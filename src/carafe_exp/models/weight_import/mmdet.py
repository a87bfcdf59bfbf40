"""mmdetection checkpoints (``{'meta', 'state_dict'}``) as ``model.weights`` of Faster / Mask R-CNN.

The model zoo's files (v2 and v3 layout: ``backbone``, ``neck``, ``rpn_head``, ``roi_head.bbox_head``,
``roi_head.mask_head``) and mmdetection v1's (``bbox_head``, ``mask_head`` at the top) load into our
torchvision-based R-CNN, tensor by tensor (``tests/reference/test_mmdet_equivalence.py`` proves the
outputs equal to mmdetection 3.3's own model):

- ``backbone.*`` → ``backbone.body.*`` (the same ResNet names);
- ``neck.lateral_convs.i.conv`` / ``neck.fpn_convs.i.conv`` → ``backbone.fpn.inner_blocks.i.0`` /
  ``layer_blocks.i.0``; FPN_CARAFE's fifth pair (3×3 s2 conv on C5, P6 output conv) →
  ``backbone.fpn.p6_lateral`` / ``p6_output``; ``neck.upsample_modules.i`` (CARAFEPack's
  ``channel_compressor`` / ``content_encoder``) → ``backbone.fpn.upsamplers.i.kernel_predictor``
  (``compressor`` / ``encoder``);
- ``rpn_head.rpn_conv`` / ``rpn_cls`` / ``rpn_reg`` → ``rpn.head.conv.0.0`` / ``cls_logits`` / ``bbox_pred``;
- ``bbox_head.shared_fcs.0/1`` → ``roi_heads.box_head.fc6/fc7``; ``fc_cls`` → ``box_predictor.cls_score``
  and ``fc_reg`` → ``box_predictor.bbox_pred``;
- ``mask_head.convs.i.conv`` → ``roi_heads.mask_head.i.0``; ``mask_head.upsample`` (deconv, or CARAFEPack)
  → ``roi_heads.mask_predictor.conv5_mask``; ``conv_logits`` → ``mask_fcn_logits``.

Class order: torchvision's class 0 is the background. mmdetection v1 did the same (81 classes), v2/v3
put the background *last* in ``fc_cls`` and have no background rows in ``fc_reg`` (80 × 4) and
``conv_logits`` (80): the background row moves to the front, and the background's 4 regression rows
and mask-logit channel, which no output of the model reads (inference and the losses index them by
the object class, ≥ 1), are zero. mmdetection's COCO classes are the categories in id order, as our
labels 1..80 are (:mod:`carafe_exp.data.coco`).

The released v2 files were trained with mmdetection v2's settings: evaluate them with
``+setting=mmdet_v2`` (a warning says so when the model is built otherwise).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.weight_import.checkpoint_file import read_checkpoint, tensors_of
from carafe_exp.models.weight_import.converted import ConvertedWeights

log = logging.getLogger(__name__)

DESCRIPTION = "an mmdetection (v1/v2/v3) Faster or Mask R-CNN checkpoint"
PRIORITY = 20
_HEADS = ("rpn_head.", "roi_head.", "bbox_head.")
_V1_TOP_LEVEL = ("bbox_head.", "mask_head.")
_FPN_LEVELS = 4

# (pattern of an mmdetection v2/v3 name, our name with the pattern's groups); first match wins.
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"backbone\.(.+)"), lambda m: f"backbone.body.{m[1]}"),
    (re.compile(r"neck\.lateral_convs\.(\d+)\.conv\.(\w+)"),
     lambda m: (f"backbone.fpn.inner_blocks.{m[1]}.0.{m[2]}" if int(m[1]) < _FPN_LEVELS
                else f"backbone.fpn.p6_lateral.{m[2]}")),
    (re.compile(r"neck\.fpn_convs\.(\d+)\.conv\.(\w+)"),
     lambda m: (f"backbone.fpn.layer_blocks.{m[1]}.0.{m[2]}" if int(m[1]) < _FPN_LEVELS
                else f"backbone.fpn.p6_output.{m[2]}")),
    (re.compile(r"neck\.upsample_modules\.(\d+)\.channel_compressor\.(\w+)"),
     lambda m: f"backbone.fpn.upsamplers.{m[1]}.kernel_predictor.compressor.{m[2]}"),
    (re.compile(r"neck\.upsample_modules\.(\d+)\.content_encoder\.(\w+)"),
     lambda m: f"backbone.fpn.upsamplers.{m[1]}.kernel_predictor.encoder.{m[2]}"),
    (re.compile(r"rpn_head\.rpn_conv\.(\w+)"), lambda m: f"rpn.head.conv.0.0.{m[1]}"),
    (re.compile(r"rpn_head\.rpn_cls\.(\w+)"), lambda m: f"rpn.head.cls_logits.{m[1]}"),
    (re.compile(r"rpn_head\.rpn_reg\.(\w+)"), lambda m: f"rpn.head.bbox_pred.{m[1]}"),
    (re.compile(r"roi_head\.bbox_head\.shared_fcs\.([01])\.(\w+)"),
     lambda m: f"roi_heads.box_head.fc{6 + int(m[1])}.{m[2]}"),
    (re.compile(r"roi_head\.bbox_head\.fc_cls\.(\w+)"), lambda m: f"roi_heads.box_predictor.cls_score.{m[1]}"),
    (re.compile(r"roi_head\.bbox_head\.fc_reg\.(\w+)"), lambda m: f"roi_heads.box_predictor.bbox_pred.{m[1]}"),
    (re.compile(r"roi_head\.mask_head\.convs\.(\d+)\.conv\.(\w+)"), lambda m: f"roi_heads.mask_head.{m[1]}.0.{m[2]}"),
    (re.compile(r"roi_head\.mask_head\.upsample\.channel_compressor\.(\w+)"),
     lambda m: f"roi_heads.mask_predictor.conv5_mask.kernel_predictor.compressor.{m[1]}"),
    (re.compile(r"roi_head\.mask_head\.upsample\.content_encoder\.(\w+)"),
     lambda m: f"roi_heads.mask_predictor.conv5_mask.kernel_predictor.encoder.{m[1]}"),
    (re.compile(r"roi_head\.mask_head\.upsample\.(weight|bias)"), lambda m: f"roi_heads.mask_predictor.conv5_mask.{m[1]}"),
    (re.compile(r"roi_head\.mask_head\.conv_logits\.(\w+)"), lambda m: f"roi_heads.mask_predictor.mask_fcn_logits.{m[1]}"),
]

# What a checkpoint's tensors need of the model, said as the keys that build it.
_NEEDS = [
    ("neck.upsample_modules.", "backbone.fpn.upsamplers.0.kernel_predictor.compressor.weight",
     "CARAFE in the FPN (upsampler=carafe)"),
    ("neck.lateral_convs.4.", "backbone.fpn.p6_lateral.weight", "FPN_CARAFE's P6 conv (model.fpn_style=fpn_carafe)"),
    ("roi_head.mask_head.", "roi_heads.mask_predictor.mask_fcn_logits.weight", "a mask branch (model=mask_rcnn)"),
    ("roi_head.mask_head.upsample.channel_compressor.",
     "roi_heads.mask_predictor.conv5_mask.kernel_predictor.compressor.weight",
     "CARAFE in the mask head (model.sites.mask_head=true upsampler=carafe)"),
]


def _mmdet_tensors(contents: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(contents, dict) or "pytorch-lightning_version" in contents:
        return None
    tensors = tensors_of(contents) if "state_dict" in contents else None
    if not tensors or not any(k.startswith("backbone.") for k in tensors):
        return None
    return tensors if any(k.startswith(_HEADS) for k in tensors) else None


def recognise(source: Path) -> bool:
    return source.is_file() and _mmdet_tensors(read_checkpoint(source)) is not None


def _version(contents: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
    """1 for mmdetection v1's layout (heads at the top, background class first), else 2 (v2 and v3)."""
    meta = contents.get("meta") or {}
    stated = str(meta.get("mmdet_version", "")) if isinstance(meta, dict) else ""
    if stated.startswith("1.") or any(k.startswith(_V1_TOP_LEVEL) for k in tensors):
        return 1
    return 2


def _our_name(name: str) -> str | None:
    for pattern, rename in _RULES:
        match = pattern.fullmatch(name)
        if match:
            return rename(match)
    return None


def _background_first(ours: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], origin: Path) -> None:
    """v2/v3 class layout → torchvision's: background from last to first; zero background rows added."""
    for suffix in ("weight", "bias"):
        key = f"roi_heads.box_predictor.cls_score.{suffix}"
        if key in ours:
            scores = ours[key]
            ours[key] = torch.cat([scores[-1:], scores[:-1]])
        for key, rows in ((f"roi_heads.box_predictor.bbox_pred.{suffix}", 4),
                          (f"roi_heads.mask_predictor.mask_fcn_logits.{suffix}", 1)):
            if key not in ours or key not in expected:
                continue
            given, wanted = ours[key], expected[key]
            if given.shape[0] == 4 and rows == 4 and wanted.shape[0] > 4:
                raise ConfigError(f"{origin}: the checkpoint's box regression is class-agnostic (reg_class_agnostic"
                                  f"=True); carafe-exp's R-CNN regresses per class")
            if given.shape[0] + rows == wanted.shape[0]:
                ours[key] = torch.cat([given.new_zeros((rows, *given.shape[1:])), given])


def _check_needs(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path) -> None:
    missing = [what for prefix, ours, what in _NEEDS
               if any(k.startswith(prefix) for k in tensors) and ours not in expected]
    if missing:
        raise ConfigError(f"model.weights={source}: this mmdetection checkpoint needs {'; '.join(missing)}, "
                          f"which the configured model does not have")


def convert(source: Path, model: nn.Module) -> ConvertedWeights:
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    if not isinstance(model, GeneralizedRCNN):
        raise ConfigError(f"model.weights={source} is {DESCRIPTION}: it fits model=faster_rcnn or "
                          f"model=mask_rcnn, not {type(model).__name__}")
    contents = read_checkpoint(source)
    tensors = _mmdet_tensors(contents) or {}
    version = _version(contents, tensors)
    if version == 1:
        tensors = {(f"roi_head.{k}" if k.startswith(_V1_TOP_LEVEL) else k): v for k, v in tensors.items()}
    expected = model.state_dict()
    _check_needs(tensors, expected, source)
    ours: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    for name, tensor in tensors.items():
        target = _our_name(name)
        if target is None:
            unplaced.append(name)
        else:
            ours[target] = tensor
    if unplaced:
        shown = ", ".join(unplaced[:6]) + (f" (+{len(unplaced) - 6} more)" if len(unplaced) > 6 else "")
        raise ConfigError(f"model.weights={source}: {len(unplaced)} tensors of this mmdetection checkpoint have "
                          f"no counterpart in carafe-exp's R-CNN: {shown}")
    if version == 2:
        _background_first(ours, expected, source)
    _warn_if_not_v2_setting(model, version)
    return ConvertedWeights(ours, f"an mmdetection v{version} checkpoint ({source})")


def _warn_if_not_v2_setting(model: nn.Module, version: int) -> None:
    """A v2/v3 checkpoint evaluated without ``setting=mmdet_v2`` gives other numbers than the zoo's."""
    from carafe_exp.models.anchors import anchors_rounded
    from carafe_exp.models.roi_align import AlignedMultiScaleRoIAlign

    if version != 2:
        return
    pooler = model.roi_heads.box_roi_pool
    v1_like = [what for what, differs in (
        ("rounded anchors", anchors_rounded(model.rpn.anchor_generator)),
        ("RoIAlign sampling ratio", pooler.sampling_ratio != 0),
        ("RoIAlign without aligned=True", not isinstance(pooler, AlignedMultiScaleRoIAlign)),
    ) if differs]
    if v1_like:
        log.warning("mmdetection v2/v3 checkpoint evaluated with mmdetection v1 settings (%s): add "
                    "+setting=mmdet_v2 to evaluate it as it was trained", ", ".join(v1_like))

"""Faster R-CNN and Mask R-CNN (R50/R101[-DCNv2]-FPN) with the CARAFE resampling sites.

Built from torchvision's ``FasterRCNN`` / ``MaskRCNN`` (RPN, RoI heads, anchor generator,
``GeneralizedRCNNTransform``), so parameter names and checkpoints are torchvision's. Sites
(``sites`` mapping, ``true`` puts the chosen resampler there, ``false`` keeps the original op):

- ``fpn``: every top-down ×2 step of the FPN (original: nearest);
- ``mask_head``: the mask predictor's 14→28 upsampling (original: 2×2 deconv + ReLU);
- ``backbone``: ResNet's 7 downsampling places (CARAFE++ §4.1: the stem max-pool, and in the
  first bottleneck of layer2–4 one before the 3×3 conv and one before the shortcut projection).

Sites not given are off, except ``fpn``, which is on unless ``sites`` says ``fpn: false``
(with the default upsampler, nearest, that is the original FPN).

The defaults are mmdetection v1's, the code every CARAFE number was trained with; each has a
key that selects torchvision's behaviour instead:

- ``fpn_style``: ``fpn_carafe`` (P6 from C5 in the top-down pass, input padded to 64, Xavier
  init) or ``torchvision`` (P6 by max-pool, padded to 32) — :mod:`carafe_exp.models.fpn`;
- ``box_loss_beta``: smooth-L1 β of the RoI box loss, 1.0 (torchvision: 1/9) —
  :mod:`carafe_exp.models.roi_heads`;
- ``head_init``: ``mmdet_v1`` or ``torchvision`` — :mod:`carafe_exp.models.head_init`;
- ``roi_align_aligned``: false (v1), true for mmdetection v2's half-pixel RoIAlign, and
  ``roi_align_sampling_ratio``: 2 (v1), 0 for v2's adaptive sampling —
  :mod:`carafe_exp.models.roi_align`;
- ``anchor_rounding``: true (v1 and torchvision round the base anchors), false for v2 —
  :mod:`carafe_exp.models.anchors`;
- ``rpn_box_loss_beta``: 1/9 (v1), 0 (L1) for v2 — :mod:`carafe_exp.models.rpn_loss`
  (``box_loss_beta`` 0 is v2's L1 RoI box loss).

``conf/setting/mmdet_v2.yaml`` sets the v2 values (how the released checkpoints were trained).
Box decoding clamps the log-size deltas on both sides as every mmdetection does
(:mod:`carafe_exp.models.box_coder`).

Images are resized inside the model (short side ``min_size``, long side at most ``max_size``)
and padded to the FPN's multiple; predictions come back in the coordinates of the images given
to ``forward``. ``num_classes`` counts object categories without the background class.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from carafe_exp.errors import ConfigError
from carafe_exp.models.anchors import set_anchor_rounding
from carafe_exp.models.box_coder import use_symmetric_clamp
from carafe_exp.models.detection_backbone import FPN_CHANNELS, build_detection_backbone
from carafe_exp.models.head_init import HEAD_INITS, init_heads_mmdet_v1
from carafe_exp.models.mask_head import (
    DEFAULT_MASK_HEAD_OVERRIDES,
    ResampledMaskPredictor,
    mask_head_upsampler_spec,
)
from carafe_exp.models.roi_align import configure_roi_align
from carafe_exp.models.roi_heads import MMDET_V1_BOX_LOSS_BETA, use_box_loss_beta
from carafe_exp.models.rpn_loss import MMDET_V1_RPN_BOX_LOSS_BETA, use_rpn_box_loss_beta
from carafe_exp.resample import ORIGINAL_DOWNSAMPLER
from carafe_exp.resample.registry import split_spec

log = logging.getLogger(__name__)

DETECTION_SITES = ("fpn", "mask_head", "backbone")
# torchvision's ImageNet normalisation (its detection checkpoints expect it).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Arguments of torchvision's FasterRCNN that the configs may set (RPN and RoI-head budgets).
_RCNN_KWARGS = frozenset({
    "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
    "rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_batch_size_per_image",
    "rpn_positive_fraction", "rpn_score_thresh", "box_score_thresh", "box_nms_thresh", "box_detections_per_img",
    "box_fg_iou_thresh", "box_bg_iou_thresh", "box_batch_size_per_image", "box_positive_fraction",
})


def _check_sites(sites: Mapping[str, bool] | None, allowed: tuple[str, ...], model: str) -> dict[str, bool]:
    given = {str(k): bool(v) for k, v in dict(sites or {}).items()}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{model} has no site(s) {unknown}; model.sites may set {list(allowed)}")
    # As in the configs: the upsampler goes into the FPN unless told otherwise.
    return {"fpn": True, **given}


def _check_rcnn_kwargs(rcnn: Mapping[str, Any] | None) -> dict[str, Any]:
    rcnn = dict(rcnn or {})
    unknown = sorted(set(rcnn) - _RCNN_KWARGS)
    if unknown:
        raise ConfigError(f"model.rcnn got unknown key(s) {unknown}; allowed: {sorted(_RCNN_KWARGS)}")
    return rcnn


_BACKBONE_KEYS = frozenset({"depth", "weights", "dcn", "frozen_stages", "norm_eval", "allow_download", "strict"})


def _build(kind: str, num_classes: int, upsampler: str | Mapping[str, Any], downsampler: str | Mapping[str, Any],
           sites: Mapping[str, bool] | None, backbone: Mapping[str, Any] | None, fpn_style: str,
           min_size: int, max_size: int, rcnn: Mapping[str, Any] | None,
           mask_head_overrides: Mapping[str, Mapping[str, Any]] | None, box_loss_beta: float, head_init: str,
           roi_align_aligned: bool, roi_align_sampling_ratio: int, anchor_rounding: bool,
           rpn_box_loss_beta: float) -> FasterRCNN:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int (object categories without background), "
                          f"got {num_classes!r}")
    allowed = DETECTION_SITES if kind == "mask_rcnn" else ("fpn", "backbone")
    enabled = _check_sites(sites, allowed, kind)
    rcnn_kwargs = _check_rcnn_kwargs(rcnn)
    backbone_cfg = dict(backbone or {})
    unknown = sorted(set(backbone_cfg) - _BACKBONE_KEYS)
    if unknown:
        raise ConfigError(f"model.backbone got unknown key(s) {unknown}; allowed: {sorted(_BACKBONE_KEYS)}")
    if head_init not in HEAD_INITS:
        raise ConfigError(f"model.head_init must be one of {list(HEAD_INITS)}, got {head_init!r}")
    for key, beta in (("box_loss_beta", box_loss_beta), ("rpn_box_loss_beta", rpn_box_loss_beta)):
        if not beta >= 0:
            raise ConfigError(f"model.{key} must be >= 0 (0 is L1), got {beta}")
    if not isinstance(roi_align_sampling_ratio, int) or isinstance(roi_align_sampling_ratio, bool) \
            or roi_align_sampling_ratio < 0:
        raise ConfigError(f"model.roi_align_sampling_ratio must be an int >= 0 (0: adaptive), "
                          f"got {roi_align_sampling_ratio!r}")
    up_name, _ = split_spec(upsampler)
    down_name, _ = split_spec(downsampler)

    body, used = build_detection_backbone(
        depth=int(backbone_cfg.get("depth", 50)), weights=backbone_cfg.get("weights"),
        dcn=bool(backbone_cfg.get("dcn", False)), frozen_stages=int(backbone_cfg.get("frozen_stages", 1)),
        norm_eval=bool(backbone_cfg.get("norm_eval", True)),
        allow_download=bool(backbone_cfg.get("allow_download", False)),
        fpn_upsampler=upsampler if enabled.get("fpn", False) else "nearest",
        backbone_downsampler=downsampler if enabled.get("backbone", False) else None,
        fpn_style=fpn_style, strict=bool(backbone_cfg.get("strict", True)))
    cls = MaskRCNN if kind == "mask_rcnn" else FasterRCNN
    model = cls(body, num_classes=num_classes + 1, min_size=min_size, max_size=max_size,
                image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), **rcnn_kwargs)
    model.transform = GeneralizedRCNNTransform(min_size, max_size, list(IMAGE_MEAN), list(IMAGE_STD),
                                               size_divisible=body.size_divisor)
    if kind == "mask_rcnn" and enabled.get("mask_head", False):
        overrides = DEFAULT_MASK_HEAD_OVERRIDES if mask_head_overrides is None else mask_head_overrides
        spec = mask_head_upsampler_spec(upsampler, overrides)
        model.roi_heads.mask_predictor = ResampledMaskPredictor(FPN_CHANNELS, num_classes + 1, spec)
        used["mask_head"] = ["roi_heads.mask_predictor.conv5_mask"]
    if head_init == "mmdet_v1":
        init_heads_mmdet_v1(model.roi_heads)
    use_box_loss_beta(model.roi_heads, box_loss_beta)
    use_rpn_box_loss_beta(model.rpn, rpn_box_loss_beta)
    for pooler in (model.roi_heads.box_roi_pool, getattr(model.roi_heads, "mask_roi_pool", None)):
        if pooler is not None:
            configure_roi_align(pooler, bool(roi_align_aligned), roi_align_sampling_ratio)
    set_anchor_rounding(model.rpn.anchor_generator, bool(anchor_rounding))
    for coder in (model.rpn.box_coder, model.roi_heads.box_coder):
        use_symmetric_clamp(coder)

    _log_sites(kind, enabled, used, up_name, down_name, fpn_style)
    log.info("%s heads: %s init, box loss smooth-L1 beta RPN %.4g / RoI %.4g, RoIAlign aligned=%s sampling "
             "ratio %d, anchors rounded=%s", kind, head_init, rpn_box_loss_beta, box_loss_beta, roi_align_aligned,
             roi_align_sampling_ratio, anchor_rounding)
    return model


def _log_sites(kind: str, enabled: Mapping[str, bool], used: Mapping[str, list[str]], up_name: str,
               down_name: str, fpn_style: str) -> None:
    up_sites = [s for s in ("fpn", "mask_head") if enabled.get(s, False)]
    for site in up_sites:
        log.info("%s site %s: upsampler %r at %s", kind, site, up_name, ", ".join(used.get(site, [])))
    if fpn_style == "fpn_carafe":
        log.info("%s: FPN_CARAFE structure: P6 is made from C5 before the top-down pass and takes part in it", kind)
    if enabled.get("backbone", False):
        log.info("%s site backbone: downsampler %r at %s", kind, down_name,
                 ", ".join(used.get("backbone", [])) or "none (the original strided convs)")
    if not up_sites and up_name != "nearest":
        log.warning("upsampler=%s is not used: no upsampling site of %s is enabled (model.sites)", up_name, kind)
    if not enabled.get("backbone", False) and down_name != ORIGINAL_DOWNSAMPLER:
        log.warning("downsampler=%s is not used: model.sites.backbone is false", down_name)


def build_faster_rcnn(num_classes: int, upsampler: str | Mapping[str, Any] = "nearest",
                      downsampler: str | Mapping[str, Any] = ORIGINAL_DOWNSAMPLER,
                      sites: Mapping[str, bool] | None = None, backbone: Mapping[str, Any] | None = None,
                      fpn_style: str = "fpn_carafe", min_size: int = 800, max_size: int = 1333,
                      rcnn: Mapping[str, Any] | None = None, box_loss_beta: float = MMDET_V1_BOX_LOSS_BETA,
                      head_init: str = "mmdet_v1", roi_align_aligned: bool = False,
                      roi_align_sampling_ratio: int = 2, anchor_rounding: bool = True,
                      rpn_box_loss_beta: float = MMDET_V1_RPN_BOX_LOSS_BETA) -> FasterRCNN:
    """Faster R-CNN R-``backbone.depth``-FPN for ``num_classes`` object categories.

    ``sites`` may enable ``fpn`` and ``backbone``; ``backbone`` holds depth, weights (None, a
    torchvision weights name in the hub cache, a checkpoint file, a run or sweep directory),
    strict, dcn, frozen_stages, norm_eval; ``rcnn`` passes RPN/RoI budgets
    (``box_batch_size_per_image`` ...) on to torchvision. ``fpn_style``, ``box_loss_beta``,
    ``head_init``, ``roi_align_aligned``, ``roi_align_sampling_ratio``, ``anchor_rounding`` and
    ``rpn_box_loss_beta`` default to mmdetection v1 (module docstring).
    """
    return _build("faster_rcnn", num_classes, upsampler, downsampler, sites, backbone, fpn_style, min_size,
                  max_size, rcnn, None, box_loss_beta, head_init, roi_align_aligned, roi_align_sampling_ratio,
                  anchor_rounding, rpn_box_loss_beta)


def build_mask_rcnn(num_classes: int, upsampler: str | Mapping[str, Any] = "nearest",
                    downsampler: str | Mapping[str, Any] = ORIGINAL_DOWNSAMPLER,
                    sites: Mapping[str, bool] | None = None, backbone: Mapping[str, Any] | None = None,
                    fpn_style: str = "fpn_carafe", min_size: int = 800, max_size: int = 1333,
                    rcnn: Mapping[str, Any] | None = None,
                    mask_head_overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    box_loss_beta: float = MMDET_V1_BOX_LOSS_BETA, head_init: str = "mmdet_v1",
                    roi_align_aligned: bool = False, roi_align_sampling_ratio: int = 2,
                    anchor_rounding: bool = True,
                    rpn_box_loss_beta: float = MMDET_V1_RPN_BOX_LOSS_BETA) -> MaskRCNN:
    """Mask R-CNN: :func:`build_faster_rcnn` plus the mask branch and its ``mask_head`` site.

    ``mask_head_overrides`` maps an upsampler name to parameters used at the mask head only
    (None: ``{deconv: {kernel_size: 2}}``, Mask R-CNN's own 2×2 deconv, while the FPN's is 3×3).
    """
    return _build("mask_rcnn", num_classes, upsampler, downsampler, sites, backbone, fpn_style, min_size,
                  max_size, rcnn, mask_head_overrides, box_loss_beta, head_init, roi_align_aligned,
                  roi_align_sampling_ratio, anchor_rounding, rpn_box_loss_beta)

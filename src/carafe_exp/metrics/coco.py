"""COCO box and mask AP with pycocotools' COCOeval on the real annotation file, DDP-aware.

Flow: each rank turns its model outputs into COCO result dicts per image
(:func:`detections_to_coco`), :class:`CocoEvaluator` gathers them from every rank with
``all_gather_object`` and keeps one entry per image id (a DistributedSampler pads the last
batch with repeated images), and COCOeval runs on the annotation file restricted to the images
that were evaluated. Every rank computes the same numbers, so every rank can log them.

Metric names follow DESIGN.md, in percent: ``bbox/AP``, ``bbox/AP50``, ``bbox/AP75``,
``bbox/APs``, ``bbox/APm``, ``bbox/APl`` and the same under ``segm/``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from carafe_exp.data.coco import load_coco

log = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats[0:6] in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def metric_names(iou_types: Iterable[str] = IOU_TYPES) -> list[str]:
    """``<iou_type>/<stat>`` for every requested IoU type."""
    return [f"{iou_type}/{stat}" for iou_type in iou_types for stat in STAT_NAMES]


def detections_to_coco(image_id: int, prediction: Mapping[str, torch.Tensor], label_to_category_id: Sequence[int],
                       mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO result dicts of one image from a torchvision prediction (boxes xyxy in image pixels).

    Labels are contiguous 1..K and map to ``label_to_category_id[label - 1]``; masks (R, 1, H, W)
    probabilities become compressed RLE at ``mask_threshold``.
    """
    boxes = prediction["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return []
    scores = prediction["scores"].detach().float().cpu().tolist()
    labels = prediction["labels"].detach().cpu().tolist()
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    xywh_list = xywh.tolist()
    rles: list[dict[str, Any]] | None = None
    if "masks" in prediction:
        masks = prediction["masks"].detach()
        if masks.dim() == 4:
            masks = masks[:, 0]
        binary = (masks > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
    results = []
    for index, (box, score, label) in enumerate(zip(xywh_list, scores, labels)):
        if not 1 <= label <= len(label_to_category_id):
            raise ValueError(f"predicted label {label} outside 1..{len(label_to_category_id)}")
        result: dict[str, Any] = {"image_id": int(image_id), "category_id": int(label_to_category_id[label - 1]),
                                  "bbox": [round(v, 3) for v in box], "score": float(score)}
        if rles is not None:
            result["segmentation"] = rles[index]
        results.append(result)
    return results


def gather_per_image(per_image: Mapping[int, list[dict[str, Any]]]) -> dict[int, list[dict[str, Any]]]:
    """Merge every rank's ``{image_id: results}``; an image seen on several ranks is kept once."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(per_image)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(per_image))
    merged: dict[int, list[dict[str, Any]]] = {}
    for part in gathered:
        for image_id, results in part.items():
            # DistributedSampler repeats images to even out ranks; their predictions are identical.
            merged.setdefault(int(image_id), results)
    return merged


def evaluate_coco(coco_gt: COCO | str | os.PathLike[str], results: Sequence[Mapping[str, Any]],
                  iou_types: Iterable[str] = IOU_TYPES, image_ids: Iterable[int] | None = None) -> dict[str, float]:
    """Run COCOeval for each IoU type on ``results``; return ``{"bbox/AP": ..., ...}`` in percent.

    ``image_ids`` restricts the evaluation (default: every image of the annotation file). With no
    results at all every metric is 0.
    """
    gt = coco_gt if isinstance(coco_gt, COCO) else load_coco(coco_gt)
    iou_types = list(iou_types)
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown COCO iou type {iou_type!r}; available: {IOU_TYPES}")
    ids = sorted(int(i) for i in image_ids) if image_ids is not None else sorted(gt.getImgIds())
    metrics = {name: 0.0 for name in metric_names(iou_types)}
    if not results:
        return metrics
    results = [dict(r) for r in results]
    for iou_type in iou_types:
        if iou_type == "segm" and any("segmentation" not in r for r in results):
            raise ValueError("segm evaluation needs a 'segmentation' in every result (a model with masks)")
        # loadRes copies and, for segm, derives the boxes from the masks; give it its own list.
        per_type = [dict(r) for r in results]
        if iou_type == "bbox":
            for r in per_type:
                r.pop("segmentation", None)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):  # pycocotools prints its progress and tables
            dt = gt.loadRes(per_type)
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.params.imgIds = ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        log.debug("COCOeval %s:\n%s", iou_type, buffer.getvalue())
        for name, value in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)]):
            # COCOeval reports -1 when a size range has no ground truth; that is no AP, not negative AP.
            metrics[f"{iou_type}/{name}"] = max(float(value), 0.0) * 100.0
    return metrics


class CocoEvaluator:
    """Accumulates per-image COCO results on each rank and computes COCO AP over all ranks."""

    def __init__(self, annotation_file: str | os.PathLike[str] | COCO, label_to_category_id: Sequence[int],
                 iou_types: Iterable[str] = ("bbox",), mask_threshold: float = 0.5) -> None:
        self.annotation_file = annotation_file
        self.label_to_category_id = list(label_to_category_id)
        self.iou_types = tuple(iou_types)
        self.mask_threshold = mask_threshold
        self.per_image: dict[int, list[dict[str, Any]]] = {}
        self._gt: COCO | None = annotation_file if isinstance(annotation_file, COCO) else None

    def reset(self) -> None:
        self.per_image = {}

    def update(self, image_ids: Sequence[int], predictions: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Add one batch: the image ids of the batch and the model's predictions for them."""
        if len(image_ids) != len(predictions):
            raise ValueError(f"{len(image_ids)} image ids but {len(predictions)} predictions")
        for image_id, prediction in zip(image_ids, predictions):
            self.per_image[int(image_id)] = detections_to_coco(int(image_id), prediction, self.label_to_category_id,
                                                               self.mask_threshold)

    def compute(self) -> dict[str, float]:
        """COCO metrics over every image seen on any rank (identical on every rank)."""
        merged = gather_per_image(self.per_image)
        results = [r for image_id in sorted(merged) for r in merged[image_id]]
        if self._gt is None:  # parse the annotation file once, not every epoch
            self._gt = load_coco(self.annotation_file)
        return evaluate_coco(self._gt, results, self.iou_types, image_ids=merged.keys())


__all__ = ["IOU_TYPES", "STAT_NAMES", "CocoEvaluator", "detections_to_coco", "evaluate_coco", "gather_per_image",
           "metric_names"]

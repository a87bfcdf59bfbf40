"""Semantic segmentation metrics: mIoU, pixel accuracy and mean class accuracy (ADE20K, CARAFE Tables 5–6).

Definitions (CSAIL's ``utils.intersectionAndUnion`` / ``eval.py`` and mmsegmentation's
``IoUMetric`` agree on them): per-class areas are summed over the **whole** evaluation set,
with ignored label pixels removed from both the prediction and the ground truth,

- ``I_c = Σ |pred = c ∧ label = c|``, ``U_c = Σ |pred = c| + Σ |label = c| − I_c``;
- ``IoU_c = I_c / U_c``; ``mIoU`` is the mean over the classes with ``U_c > 0`` (mmseg's
  nanmean: a class neither predicted nor labelled anywhere does not count; one predicted but
  never labelled counts with IoU 0);
- ``pixel_acc`` = Σ correct / Σ labelled pixels over the dataset (mmseg's ``aAcc``, the papers'
  "P.A."), not a mean of per-image accuracies;
- ``mAcc`` = mean over labelled classes of ``I_c / |label = c|``.

Values are fractions from the functions here; :class:`SegmentationMetric` reports percent, as
the papers do. Areas are exact integer counts, and the accumulator reduces across DDP processes
by summing them, so N processes that each saw part of the data report exactly what one process
that saw all of it reports.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchmetrics import Metric


class ClassAreas(NamedTuple):
    """Per-class pixel counts, each a ``(num_classes,)`` int64 tensor."""

    intersect: torch.Tensor
    union: torch.Tensor
    pred: torch.Tensor
    label: torch.Tensor


def intersect_and_union(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                        ignore_index: int = 255) -> ClassAreas:
    """Per-class intersection, union, prediction and label areas of one or more label maps.

    ``pred`` and ``target`` are integer class maps of the same shape (any batch dimensions);
    pixels whose ``target`` equals ``ignore_index`` are removed from both. Predicted or labelled
    values outside ``[0, num_classes)`` (other than the ignored label) raise ValueError.
    """
    if pred.shape != target.shape:
        raise ValueError(f"intersect_and_union: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         f"differ in shape")
    if num_classes < 1:
        raise ValueError(f"intersect_and_union: num_classes must be >= 1, got {num_classes}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("intersect_and_union: pred and target must be integer class maps, not scores")
    valid = target != ignore_index
    pred = pred[valid].long()
    target = target[valid].long()
    for name, values in (("pred", pred), ("target", target)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(f"intersect_and_union: {name} has class ids outside [0, {num_classes}) "
                             f"(min {int(values.min())}, max {int(values.max())}; ignore_index={ignore_index})")
    intersect = torch.bincount(pred[pred == target], minlength=num_classes)
    area_pred = torch.bincount(pred, minlength=num_classes)
    area_label = torch.bincount(target, minlength=num_classes)
    return ClassAreas(intersect, area_pred + area_label - intersect, area_pred, area_label)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    # nan where the denominator is zero: those classes drop out of the nan-mean.
    numerator = numerator.double()
    denominator = denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.full_like(numerator, torch.nan))


def class_iou(areas: ClassAreas) -> torch.Tensor:
    """IoU per class as a fraction; nan for classes with an empty union."""
    return _ratio(areas.intersect, areas.union)


def class_accuracy(areas: ClassAreas) -> torch.Tensor:
    """Accuracy (recall) per class as a fraction; nan for classes without labelled pixels."""
    return _ratio(areas.intersect, areas.label)


def mean_iou(areas: ClassAreas) -> float:
    """mIoU as a fraction: the nan-mean of :func:`class_iou` (nan if no class appears at all)."""
    return float(torch.nanmean(class_iou(areas)))


def mean_accuracy(areas: ClassAreas) -> float:
    """mAcc as a fraction: the nan-mean of :func:`class_accuracy`."""
    return float(torch.nanmean(class_accuracy(areas)))


def pixel_accuracy(areas: ClassAreas) -> float:
    """Correctly labelled pixels over labelled pixels (mmseg's aAcc), as a fraction; nan if none."""
    labelled = int(areas.label.sum())
    return float(areas.intersect.sum()) / labelled if labelled else float("nan")


class SegmentationMetric(Metric):
    """Accumulates :func:`intersect_and_union` areas over batches and DDP processes (sum).

    ``update(pred, target)`` takes integer class maps at the label resolution; ``compute()``
    returns ``{"mIoU", "pixel_acc", "mAcc"}`` in percent plus ``"IoU"``, the per-class IoU in
    percent (nan for classes that never appear), and ``"label_area"``, the labelled pixels per class.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"SegmentationMetric: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        for name in ClassAreas._fields:
            self.add_state(f"area_{name}", default=torch.zeros(self.num_classes, dtype=torch.int64),
                           dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        areas = intersect_and_union(pred, target, self.num_classes, self.ignore_index)
        for name, value in zip(ClassAreas._fields, areas):
            state = getattr(self, f"area_{name}")
            state += value.to(state.device)

    def areas(self) -> ClassAreas:
        """This process's accumulated areas (``compute()`` sums them over processes)."""
        return ClassAreas(*(getattr(self, f"area_{name}") for name in ClassAreas._fields))

    def compute(self) -> dict[str, torch.Tensor]:
        areas = self.areas()
        return {
            "mIoU": torch.tensor(mean_iou(areas) * 100.0, dtype=torch.float64),
            "pixel_acc": torch.tensor(pixel_accuracy(areas) * 100.0, dtype=torch.float64),
            "mAcc": torch.tensor(mean_accuracy(areas) * 100.0, dtype=torch.float64),
            "IoU": class_iou(areas) * 100.0,
            "label_area": areas.label.clone(),
        }


__all__ = [
    "ClassAreas",
    "SegmentationMetric",
    "class_accuracy",
    "class_iou",
    "intersect_and_union",
    "mean_accuracy",
    "mean_iou",
    "pixel_accuracy",
]

"""Object detection and instance segmentation (CARAFE §5.1): Faster / Mask R-CNN on COCO.

The model is a torchvision ``GeneralizedRCNN`` (it returns its loss dict in training and
detections in evaluation). The optimiser and schedule come from :class:`ResamplingTask`
(SGD 0.02 at batch 16, scaled linearly; warm-up and steps from the schedule config); an
optional gradient-norm clip (``grad_clip_norm``) mirrors mmdetection's ``grad_clip``.
Evaluation runs pycocotools' COCOeval on the data module's real annotation file after
gathering the predictions of every rank (:mod:`carafe_exp.metrics.coco`); ``test/fps`` is the
model's inference images per second (forward pass only: resize, network, post-processing), timed
as :data:`carafe_exp.tasks.base.FPS_PROTOCOL` says. A test split without public annotations
(``data.test_split=test-dev2017``) is not evaluated: its detections are written, zipped, to
``<run dir>/test-dev/`` for the COCO evaluation server (:mod:`carafe_exp.metrics.coco_results`).

The data module must provide ``annotation_file(stage)`` and ``label_to_category_id``
(:class:`carafe_exp.data.coco.CocoDataModule` does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.metrics.coco import CocoEvaluator, gather_per_image
from carafe_exp.metrics.coco_results import write_server_results
from carafe_exp.tasks.base import ResamplingTask

Batch = tuple[Sequence[torch.Tensor], Sequence[Mapping[str, Any]]]
# What torchvision's R-CNN reads from a target; the rest (ids, sizes) is bookkeeping.
_MODEL_TARGET_KEYS = ("boxes", "labels", "masks")
log = logging.getLogger(__name__)


class DetectionTask(ResamplingTask):
    """Trains a torchvision R-CNN and reports COCO ``bbox/*`` (and ``segm/*``) AP in percent and ``fps``."""

    def __init__(self, model: nn.Module, optimizer: Mapping[str, Any], schedule: Mapping[str, Any],
                 mask_threshold: float = 0.5, grad_clip_norm: float | None = None,
                 fps: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, optimizer, schedule, fps=fps)
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ConfigError(f"task.module.grad_clip_norm must be positive or null, got {grad_clip_norm}")
        self.grad_clip_norm = grad_clip_norm
        if not hasattr(model, "roi_heads") or not hasattr(model, "transform"):
            raise ConfigError(f"the detection task needs a torchvision R-CNN model, got {type(model).__name__}")
        self.mask_threshold = float(mask_threshold)
        self.has_masks = bool(model.roi_heads.has_mask())
        self.iou_types = ("bbox", "segm") if self.has_masks else ("bbox",)
        self._evaluator: CocoEvaluator | None = None

    # -- data ------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "with_masks"):
            # Decoding and resizing masks costs time; only Mask R-CNN needs them.
            datamodule.with_masks = self.has_masks

    def _model_targets(self, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, torch.Tensor]]:
        keys = _MODEL_TARGET_KEYS if self.has_masks else _MODEL_TARGET_KEYS[:2]
        return [{k: t[k] for k in keys if k in t} for t in targets]

    def _new_evaluator(self, stage: str) -> CocoEvaluator:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "annotation_file"):
            raise ConfigError("the detection task evaluates with a COCO data module (data=coco or data=coco_sample) "
                              "that provides annotation_file() and label_to_category_id")
        return CocoEvaluator(datamodule.annotation_file(stage), datamodule.label_to_category_id,
                             iou_types=self.iou_types, mask_threshold=self.mask_threshold)

    # -- training --------------------------------------------------------------------------------
    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, Any]] | None = None) -> Any:
        return self.model(list(images), None if targets is None else self._model_targets(targets))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses: dict[str, torch.Tensor] = self(images, targets)
        loss = sum(losses.values())
        batch_size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # The task's own clip (mmdetection's optimizer_config.grad_clip) unless the trainer sets one.
        if gradient_clip_val is None and self.grad_clip_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.grad_clip_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # -- evaluation ------------------------------------------------------------------------------
    def _predict(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        images, targets = batch
        predictions = self(images)
        self._evaluator.update([int(t["image_id"]) for t in targets], predictions)
        return predictions

    def _log_coco(self, stage: str) -> None:
        metrics = self._evaluator.compute()
        self._evaluator = None
        for name, value in metrics.items():
            # compute() gathered every rank's predictions: the values are already identical everywhere.
            self.log(f"{stage}/{name}", value, prog_bar=name == "bbox/AP", sync_dist=False, rank_zero_only=False)

    def on_validation_epoch_start(self) -> None:
        self._evaluator = self._new_evaluator("validate")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._predict(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_coco("val")

    def _test_is_annotated(self) -> bool:
        return bool(getattr(self.trainer.datamodule, "test_annotated", True))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._evaluator = self._new_evaluator("test")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        predictions = self.timed_inference(lambda: self(images), len(images))
        self._evaluator.update([int(t["image_id"]) for t in targets], predictions)

    def on_test_epoch_end(self) -> None:
        if self._test_is_annotated():
            self._log_coco("test")
        else:
            self._write_server_results()
        self.log_fps()

    def _write_server_results(self) -> None:
        """Gather every rank's detections; rank 0 writes the zipped results for the COCO server."""
        merged = gather_per_image(self._evaluator.per_image)
        self._evaluator = None
        if not self.trainer.is_global_zero:
            return
        datamodule = self.trainer.datamodule
        split = str(getattr(datamodule, "test_split", "test-dev2017"))
        alg = f"carafe-exp-{'mask' if self.has_masks else 'faster'}-rcnn"
        paths = write_server_results(merged, Path(self.trainer.default_root_dir) / "test-dev", split, alg,
                                     self.iou_types)
        log.info("%s has no public annotations: results for the COCO evaluation server in %s", split,
                 ", ".join(str(p) for p in paths))


__all__ = ["DetectionTask"]

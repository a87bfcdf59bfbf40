"""Semantic segmentation (CARAFE §4.2, Tables 5–6; CARAFE++ Tables VIII–IX): UperNet on ADE20K.

Training follows CSAIL's UperNet (``train.py``; CARAFE supplement §1): the per-pixel NLL of the
log-softmax is taken at the network's output resolution, 1/4 of the padded input, against
labels downsampled ×4 by nearest neighbour (CSAIL's ``segm_downsampling_rate=4``), ignoring
unlabelled and padded pixels
(``loss_resolution=quarter``). ``loss_resolution=full`` instead upsamples the logits bilinearly
to the input and uses every label pixel (mmsegmentation's way). An auxiliary FCN head, when the
model has one, adds ``aux_weight`` × its loss (mmsegmentation: 0.4). SGD without weight decay
on normalisation and bias parameters (CSAIL's ``group_weight``); lr and schedule come from
:class:`~carafe_exp.tasks.base.ResamplingTask`.

The pinned reference for resizing and label subsampling is CSAIL's PIL-based code, as released in
``mit-semseg==1.0.0`` (the package the equivalence tests import; ``dataset.py`` ``TrainDataset``):
PIL's nearest neighbour samples the *centre* pixel of each 4×4 cell (row 4i + 2), as it does for
the label resize. (The earlier cv2 code took the top-left pixel.)

Evaluation (CSAIL's ``eval.py`` and ``UPerNet.forward`` with ``use_softmax``): one image at a time
at the test scale; the *logits* are resized bilinearly to the original label size, then the
softmax, then the argmax; areas are summed over the whole
split and across DDP processes (:class:`~carafe_exp.metrics.segmentation.SegmentationMetric`).
Logged: ``mIoU``, ``pixel_acc``, ``mAcc`` and ``IoU/<class>`` in percent, and ``fps``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.metrics.segmentation import SegmentationMetric
from carafe_exp.tasks.base import ResamplingTask
from carafe_exp.tasks.optim import is_norm_parameter, weight_decay_groups

LOSS_RESOLUTIONS = ("quarter", "full")
# Output stride of UperNet's prediction (its finest pyramid level, P2).
OUTPUT_STRIDE = 4
DEFAULT_IGNORE_INDEX = 255

TrainBatch = tuple[torch.Tensor, torch.Tensor]
EvalBatch = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[int]]


def downsample_labels(labels: torch.Tensor, size: Sequence[int], stride: int = OUTPUT_STRIDE) -> torch.Tensor:
    """Labels at the output grid: PIL's nearest neighbour, the centre pixel (``stride`` // 2) of each cell.

    PIL samples source pixel ⌊(i + ½)·stride⌋ for output pixel i (mit-semseg 1.0.0 ``dataset.py``:
    ``imresize(segm_rounded, (w // 4, h // 4), interp='nearest')``).
    """
    offset = stride // 2
    down = labels[..., offset::stride, offset::stride]
    return down[..., :int(size[0]), :int(size[1])]


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, resolution: str = "quarter",
                      ignore_index: int = DEFAULT_IGNORE_INDEX) -> torch.Tensor:
    """Per-pixel NLL of ``log_softmax(logits)`` against ``labels`` (N, H, W) at ``resolution``.

    ``quarter``: the labels are nearest-downsampled to the logits' grid; ``full``: the logits are
    resized bilinearly (align_corners=False) to the labels' size. Pixels equal to
    ``ignore_index`` do not count; a batch with none labelled gives 0 (with a gradient path).
    """
    labels = labels.long()
    if resolution == "quarter":
        stride = max(round(labels.shape[-2] / logits.shape[-2]), 1)
        labels = downsample_labels(labels, logits.shape[-2:], stride)
        if tuple(labels.shape[-2:]) != tuple(logits.shape[-2:]):
            raise ValueError(f"labels {tuple(labels.shape[-2:])} do not cover the logits' grid "
                             f"{tuple(logits.shape[-2:])}")
    elif resolution == "full":
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"loss resolution must be one of {LOSS_RESOLUTIONS}, got {resolution!r}")
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.nll_loss(F.log_softmax(logits, dim=1), labels, ignore_index=ignore_index)


def is_no_decay(name: str, parameter: nn.Parameter, module: nn.Module) -> bool:
    """Biases and every parameter of a normalisation layer (CSAIL's ``group_weight``)."""
    return parameter.ndim <= 1 or name == "bias" or is_norm_parameter(name, parameter, module)


class SegmentationTask(ResamplingTask):
    """Trains a segmentation model (images → ``{"out": logits at 1/4}``) and reports mIoU / pixel accuracy."""

    def __init__(self, model: nn.Module, optimizer: Mapping[str, Any], schedule: Mapping[str, Any],
                 loss_resolution: str = "quarter", aux_weight: float = 0.4,
                 norm_bias_weight_decay: bool = False, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 class_names: Sequence[str] | None = None, fps: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, optimizer, schedule, fps=fps)
        if loss_resolution not in LOSS_RESOLUTIONS:
            raise ConfigError(f"task.module.loss_resolution must be one of {list(LOSS_RESOLUTIONS)}, "
                              f"got {loss_resolution!r}")
        if not math.isfinite(float(aux_weight)) or float(aux_weight) < 0:
            raise ConfigError(f"task.module.aux_weight must be >= 0, got {aux_weight}")
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"the segmentation task needs a segmentation model with num_classes "
                              f"(model=upernet), got {type(model).__name__}")
        self.num_classes = num_classes
        self.loss_resolution = loss_resolution
        self.aux_weight = float(aux_weight)
        self.norm_bias_weight_decay = bool(norm_bias_weight_decay)
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names) if class_names else None
        self.metrics = nn.ModuleDict({stage: SegmentationMetric(num_classes, self.ignore_index)
                                      for stage in ("val", "test")})

    # -- optimisation ----------------------------------------------------------------------------
    def parameter_groups(self) -> Any:
        if self.norm_bias_weight_decay:
            return super().parameter_groups()
        return weight_decay_groups(self, is_no_decay)

    # -- data ------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if self.class_names is None and datamodule is not None:
            names = getattr(datamodule, "class_names", None)
            if names is not None:
                self.class_names = list(names)
        if datamodule is not None:
            data_classes = getattr(datamodule, "num_classes", None)
            if data_classes is not None and int(data_classes) != self.num_classes:
                raise ConfigError(f"the model predicts {self.num_classes} classes but data={type(datamodule).__name__} "
                                  f"has {data_classes}")
            self.ignore_index = int(getattr(datamodule, "ignore_index", self.ignore_index))
            for metric in self.metrics.values():
                metric.ignore_index = self.ignore_index

    # -- training --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        outputs = self(images)
        loss = segmentation_loss(outputs["out"], labels, self.loss_resolution, self.ignore_index)
        batch_size = images.shape[0]
        if "aux" in outputs:
            aux_logits = outputs["aux"]
            if self.loss_resolution == "quarter":
                # The auxiliary head sees C4 (1/16): bring it to the main output's grid first.
                aux_logits = F.interpolate(aux_logits, size=outputs["out"].shape[-2:], mode="bilinear",
                                           align_corners=False)
            aux_loss = segmentation_loss(aux_logits, labels, self.loss_resolution, self.ignore_index)
            self.log("train/loss_aux", aux_loss, batch_size=batch_size)
            self.log("train/loss_seg", loss, batch_size=batch_size)
            loss = loss + self.aux_weight * aux_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    # -- evaluation ------------------------------------------------------------------------------
    def predict_probabilities(self, image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Class probabilities (1, K, H, W) at ``size`` for one normalised image (3, h, w).

        CSAIL's order (``UPerNet.forward`` with ``use_softmax``): logits resized bilinearly
        (align_corners=False) to the label size, then the softmax. Resizing the softmax instead
        changes the argmax on boundary pixels.
        """
        logits = self(image[None])["out"]
        logits = F.interpolate(logits, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
        return F.softmax(logits, dim=1)

    def predict_labels(self, image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Class map (H, W) at ``size`` for one normalised image (3, h, w): the argmax of the probabilities."""
        return self.predict_probabilities(image, size).argmax(dim=1)[0]

    def _evaluate(self, stage: str, batch: EvalBatch, timed: bool) -> None:
        images, labels, _ = batch
        metric = self.metrics[stage]
        for image, label in zip(images, labels):
            if timed:
                prediction = self.timed_inference(lambda: self.predict_labels(image, label.shape), 1)
            else:
                prediction = self.predict_labels(image, label.shape)
            metric.update(prediction, label.long())

    def _log_metrics(self, stage: str) -> None:
        metric = self.metrics[stage]
        values = metric.compute()
        metric.reset()
        # compute() already summed the areas over processes, so every rank holds the same numbers;
        # sync_dist averages identical values (exact) and keeps Lightning from warning about it.
        for name in ("mIoU", "pixel_acc", "mAcc"):
            self.log(f"{stage}/{name}", float(values[name]), prog_bar=name == "mIoU", sync_dist=True)
        if stage == "test":
            # Per-class IoU of the classes the labels contain (on ADE20K val: all 150). A class only
            # ever predicted has IoU 0 by definition; it counts in mIoU but is not listed.
            names = self.class_names or [str(i) for i in range(self.num_classes)]
            labelled = (values["label_area"] > 0).tolist()
            for name, iou, present in zip(names, values["IoU"].tolist(), labelled):
                if present:
                    self.log(f"test/IoU/{name.replace(' ', '_')}", iou, sync_dist=True)

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._evaluate("val", batch, timed=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._evaluate("test", batch, timed=True)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self.log_fps()


__all__ = ["LOSS_RESOLUTIONS", "SegmentationTask", "downsample_labels", "is_no_decay", "segmentation_loss"]

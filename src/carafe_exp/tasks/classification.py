"""Image classification (CARAFE++ §5.1): cross-entropy, SGD, top-1/top-5 via torchmetrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from carafe_exp.tasks.base import ResamplingTask
from carafe_exp.tasks.optim import is_norm_parameter, weight_decay_groups


class ClassificationTask(ResamplingTask):
    """Trains ``model`` (images → logits) and reports ``top1``/``top5`` in percent and inference ``fps``."""

    def __init__(self, model: nn.Module, optimizer: Mapping[str, Any], schedule: Mapping[str, Any],
                 label_smoothing: float = 0.0, norm_weight_decay: bool = True,
                 fps: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, optimizer, schedule, fps=fps)
        self.label_smoothing = float(label_smoothing)
        # False: BatchNorm's γ and β get no weight decay (Goyal et al. 2017 §5.1).
        self.norm_weight_decay = bool(norm_weight_decay)
        num_classes = self._num_classes(model)
        top_k = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for stage in ("val", "test") for name, k in (("top1", 1), ("top5", top_k))
        })

    @staticmethod
    def _num_classes(model: nn.Module) -> int:
        head = getattr(model, "fc", None)
        if isinstance(head, nn.Linear):
            return head.out_features
        raise TypeError(f"cannot tell the number of classes of {type(model).__name__}: it has no Linear `fc`")

    def parameter_groups(self) -> Any:
        if self.norm_weight_decay:
            return super().parameter_groups()
        return weight_decay_groups(self, is_norm_parameter)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _evaluate(self, stage: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True, batch_size=labels.shape[0])
        for name in ("top1", "top5"):
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(logits, labels)

    def _log_accuracy(self, stage: str) -> None:
        for name in ("top1", "top5"):
            metric = self.metrics[f"{stage}_{name}"]
            self.log(f"{stage}/{name}", metric.compute() * 100.0, prog_bar=name == "top1")
            metric.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self._evaluate("val", self(images), labels)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self.timed_inference(lambda: self(images), images.shape[0])
        self._evaluate("test", logits, labels)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")
        self.log_fps()

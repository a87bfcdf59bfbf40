"""The base LightningModule of every task: optimiser, lr schedule and the logging conventions.

Conventions every task follows, because ``cli.py`` and ``carafe-tables`` rely on them:
- training metrics are logged as ``train/<name>``, validation as ``val/<name>``, test as
  ``test/<name>``, where ``<name>`` is the DESIGN metric name (``top1``, ``bbox/AP``, ``fps``);
  percentages where the papers use percent;
- ``self.model`` is the plain nn.Module built from config by a ``build_*`` function; the task
  never reads the config.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

import lightning as L
from torch import nn

from carafe_exp.tasks.optim import build_lr_scheduler, build_optimizer

Result = TypeVar("Result")


class ResamplingTask(L.LightningModule):
    """Owns the optimiser and schedule; subclasses add the loss, metrics and steps."""

    def __init__(self, model: nn.Module, optimizer: Mapping[str, Any], schedule: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.optimizer_cfg = dict(optimizer)
        self.schedule_cfg = dict(schedule)
        self.save_hyperparameters({"optimizer": self.optimizer_cfg, "schedule": self.schedule_cfg})
        self._inference_seconds = 0.0
        self._inference_images = 0

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed_inference(self, forward: Callable[[], Result], num_images: int) -> Result:
        """Run ``forward()`` and count its wall time (device synchronised) towards ``test/fps``."""
        self._synchronize()
        start = time.perf_counter()
        result = forward()
        self._synchronize()
        self._inference_seconds += time.perf_counter() - start
        self._inference_images += num_images
        return result

    def on_test_epoch_start(self) -> None:
        self._inference_seconds, self._inference_images = 0.0, 0

    def log_fps(self) -> None:
        """Log ``test/fps``: images per second of one process's forward passes, averaged over ranks."""
        seconds = self._inference_seconds
        self.log("test/fps", self._inference_images / seconds if seconds > 0 else 0.0, sync_dist=True)

    def total_batch_size(self) -> int:
        """Images per optimiser step across every device and accumulation step."""
        trainer = self.trainer
        per_device = int(getattr(trainer.datamodule, "batch_size", 1)) if trainer.datamodule is not None else 1
        return per_device * trainer.world_size * int(trainer.accumulate_grad_batches)

    def parameter_groups(self) -> Any:
        """Parameters handed to the optimiser; tasks override to exempt norms from weight decay etc."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.parameter_groups(), self.optimizer_cfg, self.total_batch_size())
        total_steps = int(self.trainer.estimated_stepping_batches)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        steps_per_epoch = max(total_steps // max_epochs, 1)
        scheduler = build_lr_scheduler(optimizer, self.schedule_cfg, total_steps, steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

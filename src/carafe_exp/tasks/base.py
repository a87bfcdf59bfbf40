"""The base LightningModule of every task: optimiser, lr schedule and the logging conventions.

Conventions every task follows, because ``cli.py`` and ``carafe-tables`` rely on them:
- training metrics are logged as ``train/<name>``, validation as ``val/<name>``, test as
  ``test/<name>``, where ``<name>`` is the DESIGN metric name (``top1``, ``bbox/AP``, ``fps``);
  percentages where the papers use percent;
- ``self.model`` is the plain nn.Module built from config by a ``build_*`` function; the task
  never reads the config.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

import lightning as L
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.tasks.optim import build_lr_scheduler, build_optimizer

Result = TypeVar("Result")
log = logging.getLogger(__name__)

# Inference speed as mmdetection's benchmark measures it (tools/analysis_tools/benchmark.py): the
# first ``warmup_iters`` forward passes are not timed, the device is synchronised around each
# timed pass, and at most ``max_images`` images are timed. Detection tests at batch 1
# (``data.test_batch_size``), as that benchmark and mmdetection v1's test do.
FPS_PROTOCOL = {"warmup_iters": 5, "max_images": 2000}


class ResamplingTask(L.LightningModule):
    """Owns the optimiser and schedule; subclasses add the loss, metrics and steps."""

    def __init__(self, model: nn.Module, optimizer: Mapping[str, Any], schedule: Mapping[str, Any],
                 fps: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.optimizer_cfg = dict(optimizer)
        self.schedule_cfg = dict(schedule)
        self.save_hyperparameters({"optimizer": self.optimizer_cfg, "schedule": self.schedule_cfg})
        protocol = {**FPS_PROTOCOL, **dict(fps or {})}
        unknown = sorted(set(protocol) - set(FPS_PROTOCOL))
        if unknown:
            raise ConfigError(f"task.module.fps has unknown key(s) {unknown}; expected {sorted(FPS_PROTOCOL)}")
        self.fps_warmup_iters = int(protocol["warmup_iters"])
        self.fps_max_images = int(protocol["max_images"])
        if self.fps_warmup_iters < 0 or self.fps_max_images < 1:
            raise ConfigError(f"task.module.fps needs warmup_iters >= 0 and max_images >= 1, got {dict(protocol)}")
        self._inference_seconds = 0.0
        self._inference_images = 0
        self._inference_calls = 0
        self._warmup_effective = self.fps_warmup_iters

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed_inference(self, forward: Callable[[], Result], num_images: int) -> Result:
        """Run ``forward()``; time it (device synchronised) towards ``test/fps`` unless it is a warm-up pass.

        Follows :data:`FPS_PROTOCOL`: the first passes warm up untimed, and timing stops once
        ``max_images`` images were timed (the forward still runs, for the metrics).
        """
        self._inference_calls += 1
        if self._inference_calls <= self._warmup_effective or self._inference_images >= self.fps_max_images:
            return forward()
        self._synchronize()
        start = time.perf_counter()
        result = forward()
        self._synchronize()
        self._inference_seconds += time.perf_counter() - start
        self._inference_images += num_images
        return result

    def on_test_epoch_start(self) -> None:
        self._inference_seconds, self._inference_images, self._inference_calls = 0.0, 0, 0
        self._warmup_effective = self.fps_warmup_iters
        batches = sum(self.trainer.num_test_batches) if self._trainer is not None else math.inf
        if batches <= self.fps_warmup_iters:
            # A test set smaller than the warm-up (the sample data) still gets a measured speed,
            # from its last batch; the log says the warm-up was shortened.
            self._warmup_effective = max(int(batches) - 1, 0)
            log.info("fps: %d test batches, fewer than the %d warm-up passes; warming up on %d",
                     int(batches), self.fps_warmup_iters, self._warmup_effective)

    def log_fps(self) -> None:
        """Log ``test/fps``: timed images per second of one process's forward passes, averaged over ranks."""
        seconds = self._inference_seconds
        if self._inference_images == 0 or seconds <= 0:
            log.warning("fps: no forward pass was timed; test/fps is not recorded")
            return
        self.log("test/fps", self._inference_images / seconds, sync_dist=True)

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
        total_batch = self.total_batch_size()
        scheduler = build_lr_scheduler(optimizer, self.schedule_cfg, total_steps, steps_per_epoch,
                                       base_batch_size=int(self.optimizer_cfg.get("base_batch_size", total_batch)),
                                       total_batch_size=total_batch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

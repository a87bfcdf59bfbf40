"""The checkpoint files of a run: ``last.ckpt`` always, ``best.ckpt`` only when asked.

Lightning's ``ModelCheckpoint(save_last=True, monitor=...)`` rewrites ``last.ckpt`` only in an
epoch where the monitored best also changed, so ``last.ckpt`` could be epochs behind: a resume
repeated work and an evaluation of "the last checkpoint" scored older weights. Here the two jobs
are separate callbacks:

- :class:`LastCheckpoint` overwrites ``checkpoints/last.ckpt`` at the end of every epoch (after
  validation, so the state includes its metrics) and once more when training ends between epoch
  boundaries (``trainer.max_steps``); it is what ``ckpt_path=last`` resumes and what a run
  directory given as ``ckpt_path`` evaluates. A COCO epoch is about an hour on 8 GPUs and a Places
  epoch 56k iterations, so it is also rewritten inside an epoch every ``every_n_minutes`` of
  training (default 30) and/or every ``every_n_train_steps`` steps; the run resumes from such a
  checkpoint at the next batch (:mod:`carafe_exp.data.resumable_loader`). The interruption
  handler (:mod:`carafe_exp.runs.interruption`) saves through it at the step a signal arrives.
- :class:`BestCheckpoint` keeps ``checkpoints/best.ckpt``, the epoch with the best monitored
  metric; off by default (``callbacks.best_checkpoint.enabled=true``), since a detection
  checkpoint is a third of a gigabyte.

Under ``trainer.fast_dev_run`` neither writes anything (Lightning skips checkpointing there).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the state at the end of every epoch, of training, and every so often inside an epoch."""

    def __init__(self, dirpath: str | Path, every_n_minutes: float | None = 30.0,
                 every_n_train_steps: int | None = None) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                         every_n_epochs=1, enable_version_counter=False, auto_insert_metric_name=False)
        from carafe_exp.errors import ConfigError

        if every_n_minutes is not None and not every_n_minutes > 0:
            raise ConfigError(f"callbacks.last_checkpoint.every_n_minutes={every_n_minutes} must be a positive "
                              f"number of minutes or null")
        if every_n_train_steps is not None and not (isinstance(every_n_train_steps, int) and every_n_train_steps > 0):
            raise ConfigError(f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps} must be a "
                              f"positive integer or null")
        self.every_n_minutes = every_n_minutes
        self.every_n_train_steps = every_n_train_steps
        self._last_save_time = time.monotonic()

    def save_now(self, trainer: L.Trainer) -> Path | None:
        """Write ``last.ckpt`` with the state reached so far; its path, or None when nothing may be saved."""
        path = Path(str(self.dirpath)) / f"{self.filename}{self.FILE_EXTENSION}"
        if self._should_skip_saving_checkpoint(trainer):  # already saved at this step, or nothing may be
            return path if path.is_file() else None
        self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_save_time = time.monotonic()
        return path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_save_time = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        by_steps = self.every_n_train_steps is not None and trainer.global_step % self.every_n_train_steps == 0
        by_time = (self.every_n_minutes is not None
                   and time.monotonic() - self._last_save_time >= 60.0 * self.every_n_minutes)
        # Every rank decides alike (the save is collective under DDP): ranks' clocks agree after a broadcast.
        if self.every_n_minutes is not None:
            by_time = bool(trainer.strategy.broadcast(by_time))
        if by_steps or by_time:
            self.save_now(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._last_save_time = time.monotonic()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Training that stops inside an epoch (max_steps) has not been saved by the epoch hooks.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: the epoch with the best ``monitor`` value (``mode`` min or max)."""

    def __init__(self, dirpath: str | Path, monitor: str, mode: str = "max") -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                         save_last=False, every_n_epochs=1, enable_version_counter=False,
                         auto_insert_metric_name=False)

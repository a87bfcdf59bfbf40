"""The checkpoint files of a run: ``last.ckpt`` always, ``best.ckpt`` only when asked.

Lightning's ``ModelCheckpoint(save_last=True, monitor=...)`` rewrites ``last.ckpt`` only in an
epoch where the monitored best also changed, so ``last.ckpt`` could be epochs behind: a resume
repeated work and an evaluation of "the last checkpoint" scored older weights. Here the two jobs
are separate callbacks:

- :class:`LastCheckpoint` overwrites ``checkpoints/last.ckpt`` at the end of every epoch (after
  validation, so the state includes its metrics) and once more when training ends between epoch
  boundaries (``trainer.max_steps``); it is what ``ckpt_path=last`` resumes and what a run
  directory given as ``ckpt_path`` evaluates.
- :class:`BestCheckpoint` keeps ``checkpoints/best.ckpt``, the epoch with the best monitored
  metric; off by default (``callbacks.best_checkpoint.enabled=true``), since a detection
  checkpoint is a third of a gigabyte.

Under ``trainer.fast_dev_run`` neither writes anything (Lightning skips checkpointing there).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the state at the end of every epoch and at the end of training."""

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                         every_n_epochs=1, enable_version_counter=False, auto_insert_metric_name=False)

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

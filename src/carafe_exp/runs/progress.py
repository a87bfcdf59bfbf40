"""What a run shows while it trains: a live progress bar on a terminal, one log line per epoch otherwise.

A rich progress bar written into a pipe (SLURM's output file, ``| tee``) shows nothing until the
run ends. :func:`progress_reporter` picks the bar when standard output is a terminal and
:class:`EpochLines` when it is not: after each epoch one line with the epoch, the global step,
the losses, the validation metrics and the training images per second, through the logging
system (so it also lands in the job's log file).

:class:`CompactModelSummary` replaces Lightning's model summary, whose FLOPs column reads 0 for
models without an example input; it logs parameter counts only.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from carafe_exp.runs.callbacks import batch_size_of

log = logging.getLogger("carafe_exp")


def _format_value(value: Any) -> str:
    number = float(value)
    return f"{number:.4g}" if abs(number) < 1000 else f"{number:.1f}"


class EpochLines(ProgressBar):
    """One line per training epoch: ``epoch 2/12 step 480 train/loss 0.81 val/bbox/AP 3.02 15.2 img/s``."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._images = 0
        self._started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images, self._started = 0, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += batch_size_of(batch)

    def epoch_line(self, trainer: L.Trainer) -> str:
        """The line for the epoch that just ended (validation included)."""
        seconds = time.perf_counter() - self._started
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch + 1}{epochs}", f"step {trainer.global_step}"]
        metrics = trainer.callback_metrics
        for prefix in ("train/", "val/"):
            for name in sorted(k for k in metrics if k.startswith(prefix)):
                value = metrics[name]
                if getattr(value, "numel", lambda: 1)() == 1:
                    parts.append(f"{name} {_format_value(value)}")
        if seconds > 0 and self._images:
            parts.append(f"{self._images / seconds:.1f} img/s")
        return " ".join(parts)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero and not trainer.sanity_checking:
            log.info(self.epoch_line(trainer))


def progress_reporter(**rich_options: Any) -> ProgressBar:
    """A rich progress bar when standard output is a terminal, :class:`EpochLines` when it is piped."""
    stream = sys.stdout
    if stream is not None and stream.isatty():
        return RichProgressBar(**rich_options)
    return EpochLines()


class CompactModelSummary(ModelSummary):
    """Parameter counts of the model's top-level modules, logged (no FLOPs column, which reads 0 here)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int = 0,
                  **summarize_kwargs: Any) -> None:
        columns = dict(summary_data)
        rows = zip(columns.get("Name", []), columns.get("Type", []), columns.get("Params", []))
        modules = ", ".join(f"{name} ({kind}) {params}" for name, kind, params in rows)
        log.info("model: %s parameters (%s trainable), %.1f MB; %s", get_human_readable_count(total_parameters),
                 get_human_readable_count(trainable_parameters), model_size, modules)

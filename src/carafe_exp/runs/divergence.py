"""A training loss that is no longer a number stops the run, instead of becoming a chance-level result.

With ``task.module.optimizer.lr=1e8`` the loss is NaN from the first epoch, yet the run used to
end ``"completed"`` with chance top-1 and a ``metrics.json`` holding ``NaN``; on a cluster that
burnt the whole schedule and put a meaningless number into a paper table.

:class:`DivergenceGuard` looks at the loss of every training step (the value the step returned
and every ``train/*`` term the task logged at that step) and at the weights the step left (a
finite but huge loss, 1e22, can already have made a BatchNorm statistic infinite). A non-finite
one stops the run at that step: :class:`RunDiverged` propagates before any checkpoint of that step is written (Lightning
runs checkpoint callbacks after the others), so ``last.ckpt`` keeps the last finite state; the
run loop writes ``"status": "diverged"`` with the step and the term, and the CLI exits with 3.

Mixed precision is not divergence: under ``trainer.precision=16-mixed`` a GradScaler skips the
steps whose *gradients* overflow and lowers its scale, and an fp16 forward pass can overflow to
an infinite loss for a step or two while the scale settles, with the weights untouched (the
step is skipped). So a non-finite loss must persist for ``patience`` consecutive steps
(``mixed_precision_patience`` under a GradScaler) before the run counts as diverged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from carafe_exp.errors import ConfigError

log = logging.getLogger("carafe_exp")


class RunDiverged(Exception):
    """Raised by :class:`DivergenceGuard` at the step whose loss stayed non-finite."""

    def __init__(self, global_step: int, epoch: int, term: str, value: float) -> None:
        self.global_step = global_step
        self.epoch = epoch
        self.term = term
        self.value = value
        self.checkpoint: Path | None = None  # the last finite one, filled in by the run loop
        # ``epoch`` counts from 0 as in checkpoints; the message counts from 1 as the progress lines do.
        super().__init__(f"the training loss diverged at step {global_step} (epoch {epoch + 1}): {term} = {value}")


def _finite_or_term(outputs: Any, logged: dict[str, Any]) -> tuple[str, float] | None:
    """The first non-finite loss term of a step, as (name, value); None when all are finite."""
    candidates: list[tuple[str, Any]] = []
    if isinstance(outputs, torch.Tensor):
        candidates.append(("loss", outputs))
    elif isinstance(outputs, dict) and "loss" in outputs:
        candidates.append(("loss", outputs["loss"]))
    # The terms the task logged for this step name the culprit (train/loss_rpn_box, train/loss_adv, ...).
    candidates += sorted((name, value) for name, value in logged.items() if name.startswith("train/"))
    found: tuple[str, float] | None = None
    for name, value in candidates:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.detach().float().item()
        if isinstance(value, (int, float)) and not math.isfinite(value):
            # A named term is more useful than the total it makes non-finite.
            if found is None or found[0] == "loss":
                found = (name, float(value))
    return found


def _non_finite_weight(module: torch.nn.Module) -> tuple[str, float] | None:
    """The first parameter or floating-point buffer holding a NaN or inf, as (``weights: <name>``, value)."""
    tensors = [(name, t) for name, t in [*module.named_parameters(), *module.named_buffers()]
               if t.is_floating_point() and t.numel()]
    if not tensors:
        return None
    # One device-to-host synchronisation per step, not one per tensor.
    finite = torch.stack([t.detach().isfinite().all() for _, t in tensors])
    if bool(finite.all()):
        return None
    name, tensor = tensors[int((~finite).nonzero()[0])]
    value = tensor.detach()[~tensor.detach().isfinite()].flatten()[0].item()
    return f"weights: {name}", float(value)


class DivergenceGuard(L.Callback):
    """Stops training at a non-finite loss that persists for ``patience`` steps (see the module docstring)."""

    def __init__(self, patience: int = 1, mixed_precision_patience: int = 10) -> None:
        for key, value in (("patience", patience), ("mixed_precision_patience", mixed_precision_patience)):
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"callbacks.divergence.{key}={value} must be an integer >= 1")
        self.patience = patience
        self.mixed_precision_patience = mixed_precision_patience
        self._streak = 0

    def _patience_of(self, trainer: L.Trainer) -> int:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return self.mixed_precision_patience if scaler is not None else self.patience

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bad = _finite_or_term(outputs, dict(trainer.callback_metrics)) or _non_finite_weight(pl_module)
        if trainer.world_size > 1:
            # Every rank stops at the same step, or the others would wait in the next collective for ever.
            if trainer.strategy.reduce_boolean_decision(bad is not None, all=False) and bad is None:
                bad = ("loss (on another rank)", math.nan)
        if bad is None:
            self._streak = 0
            return
        self._streak += 1
        if self._streak < self._patience_of(trainer):
            log.warning("non-finite training loss at step %d (%s = %s); %d in a row", trainer.global_step, bad[0],
                        bad[1], self._streak)
            return
        raise RunDiverged(trainer.global_step, trainer.current_epoch, bad[0], bad[1])

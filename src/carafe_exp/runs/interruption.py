"""A run stopped by a signal saves the step it reached, says so, and exits non-zero.

Schedulers end jobs with signals: SLURM (``scancel``, preemption, ``--time`` reached),
Kubernetes and ``timeout`` send SIGTERM, a terminal SIGINT (Ctrl-C), and SLURM's ``--signal``
(used for requeueing) SIGUSR1 or, under submitit, SIGUSR2. Lightning alone logged "Received
SIGTERM" and exited 0 with no record, so a scheduler and ``carafe-tables`` took the job for a
success or for one that never started.

Here, from the moment a job starts:

- the first of these signals only sets a request (:class:`StopRequest`); at the end of the
  training step in progress, :class:`InterruptionCallback` saves ``last.ckpt`` through
  :class:`carafe_exp.runs.checkpoint_files.LastCheckpoint` (the sampler position and random
  state included, so a resume continues with the next batch) and raises :class:`RunInterrupted`;
  the run loop writes ``metrics.json`` with ``"status": "interrupted"`` and the CLI exits with
  ``128 + signal number`` (the shell's convention: 143 for SIGTERM, 130 for SIGINT);
- a signal that arrives while no training step runs (data setup, validation of the sanity
  check, testing) stops the run at once, with the last checkpoint as it was;
- a second signal while the first is being handled ends the process at once (``os._exit``);
  checkpoints are written atomically (:mod:`carafe_exp.runs.atomic_checkpoint_io`), so the
  previous ``last.ckpt`` stays valid.

A handler that was installed before (submitit's requeue handler for its SIGUSR2, or SIGTERM's
"bypass") is called after the checkpoint is written, so a cluster launcher's requeue still
happens; the requeued job finds the ``interrupted`` record and resumes (:mod:`carafe_exp.runs.rerun`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import lightning as L

log = logging.getLogger("carafe_exp")

HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
                        if hasattr(signal, name))


def exit_code_of(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


class RunInterrupted(Exception):
    """Raised at a step boundary (or at once outside training) after a stop signal."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        self.signum = int(signum)
        self.checkpoint = checkpoint
        # Filled in by the run loop: where training was, and whether metrics.json says so.
        self.epoch: int | None = None
        self.global_step: int | None = None
        self.recorded = False
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


@dataclass
class StopRequest:
    """The signal handlers' state: which signal came, and whether a training step is running."""

    signum: int | None = None
    in_training_step: bool = False
    handling: bool = False
    previous: dict[int, Any] = field(default_factory=dict)
    # Passes the signal on to the DDP worker processes Lightning's launcher started (local ``trainer=ddp``).
    forward: Callable[[int], None] | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or self.handling:
            # A second signal: stop now. Checkpoints are atomic, so nothing half-written remains.
            os.write(2, f"carafe-exp: {signal.Signals(signum).name} again: stopping at once\n".encode())
            os._exit(exit_code_of(signum))
        self.signum = int(signum)
        if self.forward is not None:
            self.forward(signum)
        log.warning("received %s: saving the step reached, then stopping", signal.Signals(signum).name)
        if not self.in_training_step:
            self.handling = True
            raise RunInterrupted(signum)

    def install(self) -> None:
        """Install the handler for every stop signal (main thread only; elsewhere nothing is installed)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in HANDLED_SIGNALS:
            self.previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self.handler)

    def reinstall(self) -> None:
        """Take the signals back from Lightning, which replaces SIGTERM's handler when training starts.

        Lightning's own SIGTERM handling raises a ``SystemExit`` with status 0 at the next step,
        without a checkpoint; the handlers from before :meth:`install` stay the ones chained.
        """
        if self.previous and threading.current_thread() is threading.main_thread():
            for signum in self.previous:
                signal.signal(signum, self.handler)

    def uninstall(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    def chain_previous(self) -> None:
        """Call the handler that was installed before ours for the received signal (a launcher's requeue)."""
        if self.signum is None:
            return
        previous: Callable[..., Any] | int | None = self.previous.get(self.signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)


class InterruptionCallback(L.Callback):
    """Saves ``last.ckpt`` and raises :class:`RunInterrupted` at the end of the step a signal arrived in."""

    def __init__(self, request: StopRequest) -> None:
        self.request = request

    # From the first step to the end of training a signal waits for the end of a step (a signal
    # during validation or between steps, for the next one): only there is the saved state one
    # that a resume continues exactly (Lightning has fetched the next batch before a step starts).
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.request.reinstall()
        launcher = trainer.strategy.launcher
        if launcher is not None and getattr(launcher, "procs", None):
            self.request.forward = launcher.kill

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.request.in_training_step = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        requested = self.request.signum is not None
        if trainer.world_size > 1:
            # Ranks save together (a collective): any rank's signal stops every rank at this step.
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            if self.request.signum is None:
                self.request.signum = int(signal.SIGTERM)
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.request.in_training_step = False

    def _stop(self, trainer: L.Trainer) -> None:
        from carafe_exp.runs.checkpoint_files import LastCheckpoint

        assert self.request.signum is not None
        self.request.handling = True
        self.request.in_training_step = False
        saved: Path | None = None
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, LastCheckpoint):
                saved = callback.save_now(trainer)
        raise RunInterrupted(self.request.signum, saved)


def describe(error: RunInterrupted) -> dict[str, Any]:
    """The ``"interruption"`` entry of metrics.json."""
    return {"signal": error.signal_name, "epoch": error.epoch, "global_step": error.global_step,
            "checkpoint": str(error.checkpoint) if error.checkpoint is not None else None}


__all__ = ["HANDLED_SIGNALS", "InterruptionCallback", "RunInterrupted", "StopRequest", "describe", "exit_code_of"]

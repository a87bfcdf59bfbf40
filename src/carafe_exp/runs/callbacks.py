"""Lightning callbacks of the run loop: training throughput, random-number state and model identity in checkpoints.

The checkpoint files themselves are written by :mod:`carafe_exp.runs.checkpoint_files`; what is
printed while a run trains by :mod:`carafe_exp.runs.progress`.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def batch_size_of(batch: Any) -> int:
    """Images in a batch: a tensor's first dim, or the length of the first element of a tuple/list/dict."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
        return batch_size_of(batch)
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        return int(first.shape[0]) if isinstance(first, torch.Tensor) else len(first)
    return 1


class ThroughputTimer(L.Callback):
    """Wall-clock training images per second (per process), for metrics.json's ``throughput``.

    It covers the optimisation steps only (forward, backward and optimiser step, from each batch's
    start to its end; fetching the next batch and validation are outside), which is what a user
    comparing upsamplers pays per step. Test speed is the task's ``fps`` metric
    (measured around the forward passes alone), so it is not timed twice here.
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start: float | None = None

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._sync(trainer)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._start is None:
            return
        self._sync(trainer)
        self.seconds += time.perf_counter() - self._start
        self.images += batch_size_of(batch)
        self._start = None

    def summary(self) -> dict[str, float]:
        """``{"train_images_per_s": ...}`` when training ran (the backward pass included)."""
        return {"train_images_per_s": self.images / self.seconds} if self.seconds > 0 else {}


class RunIdentity(L.Callback):
    """Writes a description of the model (task, network, resamplers and their sites) into every checkpoint.

    Evaluating a checkpoint with another model's config then fails with one line naming both
    models instead of a ``state_dict`` traceback (:mod:`carafe_exp.runs.checkpoint_inspection`).
    """

    def __init__(self, description: dict[str, Any]) -> None:
        self.description = dict(description)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        from carafe_exp.runs.checkpoint_inspection import DESCRIPTION_KEY

        checkpoint[DESCRIPTION_KEY] = self.description


class RandomStateCheckpoint(L.Callback):
    """Saves the random number generators' state in every checkpoint and restores it on resume.

    Without it a resumed run shuffles and augments from a fresh seed, so a run killed after
    epoch e and resumed does not end with the weights of an uninterrupted run.
    """

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    restored: dict[str, Any] | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        import numpy as np

        # Kept so that it can be applied again right before training resumes, after the setup
        # that follows a restore drew from the generators (carafe_exp.data.resumable_loader).
        self.restored = state_dict
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])

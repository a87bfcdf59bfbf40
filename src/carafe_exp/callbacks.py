"""Lightning callbacks of the run loop: throughput timing for metrics.json."""

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
    """Wall-clock images per second of training and testing (per process), for metrics.json.

    Training time covers the optimisation steps only (data loading included, validation excluded),
    which is what a user comparing upsamplers pays per epoch.
    """

    def __init__(self) -> None:
        self.images = {"train": 0, "test": 0}
        self.seconds = {"train": 0.0, "test": 0.0}
        self._start: float | None = None

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def _begin(self, trainer: L.Trainer) -> None:
        self._sync(trainer)
        self._start = time.perf_counter()

    def _end(self, trainer: L.Trainer, stage: str, batch: Any) -> None:
        if self._start is None:
            return
        self._sync(trainer)
        self.seconds[stage] += time.perf_counter() - self._start
        self.images[stage] += batch_size_of(batch)
        self._start = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._begin(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._end(trainer, "train", batch)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._begin(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._end(trainer, "test", batch)

    def summary(self) -> dict[str, float]:
        """Images per second per stage that ran (training includes the backward pass)."""
        return {f"{stage}_images_per_s": self.images[stage] / self.seconds[stage]
                for stage in self.images if self.seconds[stage] > 0}


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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        import numpy as np

        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])

"""Training loaders that a mid-epoch checkpoint resumes at the next batch, with the same data and randomness.

A COCO epoch is about an hour on 8 GPUs and a Places epoch 56k iterations, so ``last.ckpt`` is
also written inside epochs (:mod:`carafe_exp.runs.checkpoint_files`) and when a signal stops a
run (:mod:`carafe_exp.runs.interruption`). Resuming from such a checkpoint must continue with
the batch that comes next in the interrupted epoch's order, and each later batch must be
augmented with the random numbers an uninterrupted run would have used, or the resumed run ends
with other weights. Three pieces do that:

- :class:`ResumableBatchSampler` draws an epoch's batches (``draw_batches``: plain, or grouped by
  aspect ratio in :class:`carafe_exp.data.group_sampler.GroupedBatchSampler`) from its index sampler (a
  ``RandomSampler``, or the ``DistributedSampler`` Lightning puts in under DDP) when the epoch's
  first batch is fetched, as ``BatchSampler`` does, keeps that order, counts the batches handed
  out, and notes the random state (torch, NumPy, Python: the generators the transforms use) just
  before each of the last few batches is produced;
- :class:`ResumableDataLoader` exposes that as ``state_dict`` / ``load_state_dict``, which
  Lightning stores in the checkpoint's fit-loop state and gives back on resume;
- :class:`LoaderPosition`, a callback the run loop always adds, writes into that state how many
  batches of the epoch were *trained* when the checkpoint was taken. Lightning fetches one batch
  ahead of the step it trains, so the count of batches handed out is one too many, and the random
  state at save time already includes the next batch's augmentation.

On resume the sampler replays the saved order from the first untrained batch: that batch is
produced with the random state noted before it was first produced, and every later one with the
state the checkpoint restored (:class:`carafe_exp.runs.callbacks.RandomStateCheckpoint`), which
is exactly the sequence an uninterrupted run goes through. Exact for ``data.num_workers=0``;
with worker processes the order of the data is the same, but the workers' random seeds are drawn
afresh, so the augmentation of the rest of that epoch differs (later epochs are as before).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

# Batches whose random state is kept: the one being trained and the one fetched ahead, with room to spare.
_SNAPSHOTS_KEPT = 4


def cpu_random_state() -> list[Any]:
    """The CPU random generators' state (torch, NumPy, Python), in types ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [torch.get_rng_state(), [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                                    float(cached)], random.getstate()]


def set_cpu_random_state(state: list[Any]) -> None:
    """Restore a state of :func:`cpu_random_state`."""
    torch_state, (kind, keys, pos, has_gauss, cached), python_state = state
    torch.set_rng_state(torch_state)
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(python_state)


class ResumableBatchSampler(BatchSampler):
    """A ``BatchSampler`` whose epoch can be resumed at any batch (see the module docstring)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self._batches: list[list[int]] = []
        self._handed_out = 0
        self._snapshots: dict[int, list[Any]] = {}
        self._pending: dict[str, Any] | None = None
        self._state_after_restore: list[Any] | None = None

    def __iter__(self) -> Iterator[list[int]]:
        pending, self._pending = self._pending, None
        after_restore, self._state_after_restore = self._state_after_restore, None
        if pending is None:
            # Drawn now, when the first batch is fetched: the same random numbers as a BatchSampler.
            self._batches = [list(batch) for batch in self.draw_batches()]
            start = 0
        else:
            self._batches, start = pending["batches"], pending["position"]
        self._snapshots = {}
        replay = pending is not None and pending["snapshot"] is not None
        for index in range(start, len(self._batches)):
            if replay and index == start:
                # The first untrained batch, with the random state it was first produced with.
                set_cpu_random_state(pending["snapshot"])
            elif replay and index == start + 1 and after_restore is not None:
                set_cpu_random_state(after_restore)
            self._snapshots[index] = cpu_random_state()
            self._snapshots.pop(index - _SNAPSHOTS_KEPT, None)
            self._handed_out = index + 1
            yield self._batches[index]
        if replay and len(self._batches) == start + 1 and after_restore is not None:
            set_cpu_random_state(after_restore)

    def draw_batches(self) -> Iterator[list[int]]:
        """One epoch's batches in order; a subclass may form them otherwise (aspect-ratio groups)."""
        return BatchSampler.__iter__(self)

    def state_dict(self) -> dict[str, Any]:
        """The epoch's order, the batches handed out, and the random state before the last few of them."""
        sizes = [len(batch) for batch in self._batches]
        flat = [index for batch in self._batches for index in batch]
        return {"indices": torch.tensor(flat, dtype=torch.int64), "sizes": torch.tensor(sizes, dtype=torch.int64),
                "handed_out": self._handed_out,
                "snapshots": [[index, state] for index, state in sorted(self._snapshots.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the saved epoch at ``state["position"]`` (set by :class:`LoaderPosition`) on the next ``iter``."""
        position = int(state.get("position", state["handed_out"]))
        sizes = state["sizes"].tolist()
        if position >= len(sizes):
            return  # saved at the end of an epoch: the next one starts afresh
        flat = state["indices"].tolist()
        batches, offset = [], 0
        for size in sizes:
            batches.append(flat[offset:offset + size])
            offset += size
        snapshots = {int(index): snapshot for index, snapshot in state["snapshots"]}
        # A batch already produced (fetched ahead of training) is produced again with the random
        # state it had; one not produced yet is made with the state the checkpoint restored.
        self._pending = {"batches": batches, "position": position, "snapshot": snapshots.get(position)
                         if position < int(state["handed_out"]) else None}

    @property
    def resuming(self) -> bool:
        """Whether the next ``iter`` resumes a saved epoch."""
        return self._pending is not None

    def note_state_after_restore(self, state: list[Any]) -> None:
        """The random state the checkpoint restored: the batches after the first resumed one are made with it."""
        self._state_after_restore = state


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableBatchSampler`, stateful in Lightning's sense."""

    def __iter__(self) -> Any:
        batch_sampler = self.batch_sampler
        if isinstance(batch_sampler, ResumableBatchSampler) and batch_sampler.resuming:
            # Creating the iterator draws a worker seed from torch's generator; the resumed epoch
            # must not see that draw, which the uninterrupted run made before its first batch.
            restored = cpu_random_state()
            batch_sampler.note_state_after_restore(restored)
            iterator = super().__iter__()
            set_cpu_random_state(restored)
            return iterator
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        batch_sampler = self.batch_sampler
        return batch_sampler.state_dict() if isinstance(batch_sampler, ResumableBatchSampler) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        batch_sampler = self.batch_sampler
        if isinstance(batch_sampler, ResumableBatchSampler) and state:
            batch_sampler.load_state_dict(state)


class LoaderPosition(L.Callback):
    """Writes the number of the epoch's batches already trained into the saved loader states; resumes from them.

    Lightning gives the saved states back to the loaders when it builds them, but a task whose
    learning-rate schedule asks for ``trainer.estimated_stepping_batches`` has them built (and
    their first batch fetched) before the checkpoint is restored, and the states are then never
    applied. So at the start of training the states still waiting are applied here and the
    training iterator is made again, from the random state the checkpoint holds (applied again:
    building the first iterator after the restore drew from it).
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from carafe_exp.runs.callbacks import RandomStateCheckpoint

        fit_loop = trainer.fit_loop
        if fit_loop.restarting and fit_loop._combined_loader_states_to_load and fit_loop._combined_loader is not None:
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, RandomStateCheckpoint) and callback.restored is not None:
                    callback.load_state_dict(callback.restored)
            fit_loop._load_combined_loader_states()
            if fit_loop._data_fetcher is not None:
                iter(fit_loop._data_fetcher)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [])
        trained = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        for state in states:
            if isinstance(state, dict) and "handed_out" in state:
                state["position"] = trained


def resumable_loader(dataset: Any, batch_size: int, shuffle: bool, drop_last: bool, **kwargs: Any) -> DataLoader:
    """A training ``DataLoader`` (random order when ``shuffle``) that mid-epoch checkpoints resume exactly."""
    from torch.utils.data import RandomSampler, SequentialSampler

    sampler: Sampler[int] = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return ResumableDataLoader(dataset, batch_sampler=ResumableBatchSampler(sampler, batch_size, drop_last),
                               **kwargs)

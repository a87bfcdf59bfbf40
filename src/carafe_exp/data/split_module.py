"""A LightningDataModule whose datasets are named splits (train, val, test), each built on first use.

COCO (train2017 / val2017 / test-dev) and ADE20K (training / validation) validate on one split and
may test on another; ``test_split`` falls back to ``val_split``.
"""

from __future__ import annotations

import abc
from typing import Any

import lightning as L
from torch.utils.data import Dataset


class SplitDataModule(L.LightningDataModule, abc.ABC):
    """Subclasses set ``train_split``, ``val_split``, ``test_split`` and build a split in :meth:`_dataset`."""

    train_split: str
    val_split: str
    test_split: str

    @abc.abstractmethod
    def _dataset(self, split: str, train: bool) -> Dataset[Any]:
        """The dataset of ``split`` (cached: built and checked once), with training or evaluation transforms."""

    def setup(self, stage: str | None = None) -> None:
        # Building the datasets here reports a missing or malformed split before training starts.
        if stage in (None, "fit"):
            self._dataset(self.train_split, train=True)
        if stage in (None, "fit", "validate"):
            self._dataset(self.val_split, train=False)
        if stage in (None, "test"):
            self._dataset(self.test_split, train=False)

"""A LightningDataModule with one training set and one evaluation set that serves validation and test.

ImageNet (the papers report its val split) and Places (val_256) evaluate on the same split they
validate on; this base class holds their shared loader policy.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from carafe_exp.data.resumable_loader import resumable_loader


class TrainValDataModule(L.LightningDataModule):
    """Subclasses set ``batch_size``, ``num_workers``, and ``train_set`` / ``val_set`` in ``setup``."""

    batch_size: int
    num_workers: int
    train_set: Dataset[Any] | None = None
    val_set: Dataset[Any] | None = None

    def _loader(self, dataset: Dataset[Any], shuffle: bool) -> DataLoader:
        # Training drops a ragged last batch (BatchNorm), but never the only one: a dataset smaller
        # than a batch must still train rather than stop silently with no batches.
        drop_last = shuffle and len(dataset) >= self.batch_size  # type: ignore[arg-type]
        options = dict(num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                       persistent_workers=self.num_workers > 0)
        if shuffle:
            # Training: a mid-epoch checkpoint resumes at the next batch (carafe_exp.data.resumable_loader).
            return resumable_loader(dataset, self.batch_size, shuffle=True, drop_last=drop_last, **options)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, drop_last=drop_last, **options)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') builds the training set"
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() builds the evaluation set"
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() builds the evaluation set"
        return self._loader(self.val_set, shuffle=False)

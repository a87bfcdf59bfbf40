"""ADE20K SceneParsing (ADEChallengeData2016): the reader and the LightningDataModule of ``task=segmentation``.

Layout (the official archive)::

    root/images/training/ADE_train_00000001.jpg ...     root/images/validation/ADE_val_00000001.jpg ...
    root/annotations/training/ADE_train_00000001.png    root/annotations/validation/...

Each image has an 8-bit single-channel label PNG of the same size and stem: 0 is "other /
unlabelled" (ignored by the loss and the metrics), 1–150 are the classes of
:data:`~carafe_exp.data.ade20k_classes.ADE20K_CLASSES`. The reader maps 0 to ``IGNORE_INDEX``
and ``i`` to ``i − 1`` (mmsegmentation's ``reduce_zero_label``; CSAIL subtracts 1 and ignores −1).
Greyscale images (a few in ADE20K) are read as RGB. A missing partner, a size mismatch, a
corrupt file, a multi-channel label or a label value above 150 fails with one line naming the file.

With ``sample`` set, :mod:`carafe_exp.data.ade20k_sample` first writes a small generated dataset
in this layout under ``root`` (once, atomically), which is then read by the same reader.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, RandomSampler

from carafe_exp.data.ade20k_classes import ADE20K_CLASSES
from carafe_exp.data.group_sampler import GroupedBatchSampler
from carafe_exp.data.resumable_loader import ResumableDataLoader, resumable_loader
from carafe_exp.data.segmentation_transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    EvalTransform,
    TrainBatch,
    collate_eval,
)
from carafe_exp.data.split_module import SplitDataModule
from carafe_exp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EXPECTED_LAYOUT = ("<root>/images/{training,validation}/*.jpg with "
                   "<root>/annotations/{training,validation}/*.png of the same names (ADEChallengeData2016)")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIX = ".png"
# The paper's scales (CARAFE supplement §1).
PAPER_TRAIN_SHORT_SIDES = (300, 375, 450, 525, 600)
PAPER_TEST_SHORT_SIDE = 450
PAPER_MAX_LONG_SIDE = 1200


def _files(directory: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def list_pairs(root: str | os.PathLike[str], split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of ``split``, matched by file stem; any unmatched file is a DataError."""
    root = Path(root)
    image_dir, label_dir = root / "images" / split, root / "annotations" / split
    for directory in (image_dir, label_dir):
        if not directory.is_dir():
            raise DataError(f"ADE20K directory missing: {directory}; expected {EXPECTED_LAYOUT}")
    images, labels = _files(image_dir, IMAGE_SUFFIXES), _files(label_dir, (LABEL_SUFFIX,))
    if not images:
        raise DataError(f"no images in {image_dir}; expected {EXPECTED_LAYOUT}")
    for stem, path in images.items():
        if stem not in labels:
            raise DataError(f"ADE20K image {path} has no label {label_dir / (stem + LABEL_SUFFIX)}")
    for stem, path in labels.items():
        if stem not in images:
            raise DataError(f"ADE20K label {path} has no image {image_dir / (stem + '.jpg')}")
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def read_image(path: Path) -> torch.Tensor:
    """An image file as a uint8 (3, H, W) RGB tensor (greyscale and palette images converted)."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"cannot read ADE20K image {path}: {error}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"cannot read ADE20K image {path}: {error}") from None
    return int(height), int(width)


def orientation_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """CSAIL's two batch classes from (height, width): 0 if h > w (portrait), else 1 (``TrainDataset``).

    Unlike mmdetection's aspect-ratio flag, a square image goes with the landscape ones.
    """
    return [0 if height > width else 1 for height, width in sizes]


def read_label(path: Path, num_classes: int) -> torch.Tensor:
    """A label PNG as a uint8 (H, W) tensor: 0 → IGNORE_INDEX, i → i − 1."""
    try:
        with Image.open(path) as label:
            mode = label.mode
            array = np.asarray(label, dtype=np.uint8) if mode in ("L", "P") else None
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"cannot read ADE20K label {path}: {error}") from None
    if array is None:
        raise DataError(f"ADE20K label {path} is a {mode} image; expected an 8-bit single-channel PNG "
                        f"(0 = unlabelled, 1..{num_classes} = classes)")
    top = int(array.max()) if array.size else 0
    if top > num_classes:
        raise DataError(f"ADE20K label {path} holds value {top}; expected 0 (unlabelled) .. {num_classes}")
    mapped = array.astype(np.int16) - 1
    mapped[array == 0] = IGNORE_INDEX
    return torch.from_numpy(mapped.astype(np.uint8))


class ADE20KSegmentation(Dataset):
    """One split as ``(image, label, index)``: uint8 (3, H, W) RGB or a transformed tensor, uint8 (H, W)."""

    def __init__(self, root: str | os.PathLike[str], split: str, num_classes: int = len(ADE20K_CLASSES),
                 transform: EvalTransform | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.num_classes = int(num_classes)
        self.transform = transform
        self.pairs = list_pairs(self.root, split)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = read_label(label_path, self.num_classes)
        if tuple(image.shape[-2:]) != tuple(label.shape):
            raise DataError(f"ADE20K image {image_path} is {image.shape[-1]}x{image.shape[-2]} but its label "
                            f"{label_path} is {label.shape[-1]}x{label.shape[-2]}")
        if self.transform is not None:
            image = self.transform(image)
        return image, label, index


class ADE20KDataModule(SplitDataModule):
    """ADE20K (or the generated sample, with ``sample``) for the segmentation task.

    ``batch_size`` is the training batch per device (the paper: 2 on each of 8 GPUs); evaluation
    runs one image at a time at its own size, as CSAIL's evaluation does. ``group_by_orientation``
    builds each training batch from portrait or from landscape images only (CSAIL ``dataset.py``
    ``TrainDataset``), with the aspect-ratio grouping of the COCO reader. ``normalization``: see
    :data:`~carafe_exp.data.segmentation_transforms.NORMALIZATIONS`. The validation split
    doubles as the test split (ADE20K's test images have no public labels).
    """

    def __init__(self, root: str | os.PathLike[str], batch_size: int = 2, num_workers: int = 4,
                 train_split: str = "training", val_split: str = "validation", test_split: str | None = None,
                 train_short_sides: Sequence[int] = PAPER_TRAIN_SHORT_SIDES,
                 test_short_side: int = PAPER_TEST_SHORT_SIDE, max_long_side: int = PAPER_MAX_LONG_SIDE,
                 flip_prob: float = 0.5, size_divisor: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, persistent_workers: bool = True,
                 sample: Mapping[str, Any] | None = None, group_by_orientation: bool = False,
                 normalization: str = "mean_std") -> None:
        super().__init__()
        if root is None or str(root) in ("", "???"):
            raise DataError(f"data.root is not set: give the ADEChallengeData2016 directory ({EXPECTED_LAYOUT})")
        if int(batch_size) < 1:
            raise DataError(f"data.batch_size must be >= 1, got {batch_size}")
        short_sides = [int(s) for s in train_short_sides]
        if not short_sides or min(short_sides) < 1 or int(test_short_side) < 1 or int(max_long_side) < 1:
            raise DataError(f"data.train_short_sides, data.test_short_side and data.max_long_side must be "
                            f"positive, got {short_sides}, {test_short_side}, {max_long_side}")
        if int(size_divisor) < 1:
            raise DataError(f"data.size_divisor must be >= 1, got {size_divisor}")
        if not 0.0 <= float(flip_prob) <= 1.0:
            raise ConfigError(f"data.flip_prob={flip_prob} is a probability: it must be in [0, 1]")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"data.normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
        self.root = Path(root).expanduser()
        self.batch_size = int(batch_size)
        self.group_by_orientation = bool(group_by_orientation)
        self.normalization = normalization
        self.num_workers = int(num_workers)
        self.train_split, self.val_split = train_split, val_split
        self.test_split = test_split or val_split
        self.train_short_sides = short_sides
        self.test_short_side = int(test_short_side)
        self.max_long_side = int(max_long_side)
        self.flip_prob = float(flip_prob)
        self.size_divisor = int(size_divisor)
        self.mean, self.std = tuple(mean), tuple(std)
        self.persistent_workers = bool(persistent_workers)
        self.sample = dict(sample) if sample is not None else None
        if self.sample is not None:
            from carafe_exp.data.ade20k_sample import write_ade20k_sample
            from carafe_exp.data.sample_cache import ensure_sample

            self.root = ensure_sample(self.root, write_ade20k_sample, self.sample)
        if not self.root.is_dir():
            raise DataError(f"data.root={self.root} does not exist; expected {EXPECTED_LAYOUT}")
        self.class_names: tuple[str, ...] = ADE20K_CLASSES
        self.ignore_index = IGNORE_INDEX
        self._datasets: dict[str, ADE20KSegmentation] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _dataset(self, split: str, train: bool) -> ADE20KSegmentation:
        key = f"{split}:{'train' if train else 'eval'}"
        if key not in self._datasets:
            transform = None if train else EvalTransform(self.test_short_side, self.max_long_side,
                                                         self.size_divisor, self.mean, self.std, self.normalization)
            self._datasets[key] = ADE20KSegmentation(self.root, split, self.num_classes, transform=transform)
            log.info("ADE20K %s: %d images", split, len(self._datasets[key]))
        return self._datasets[key]

    def train_collate(self) -> TrainBatch:
        return TrainBatch(self.train_short_sides, self.max_long_side, self.flip_prob, self.size_divisor,
                          self.mean, self.std, self.normalization)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.train_split, train=True)
        if self.group_by_orientation:
            # Image headers only; CSAIL reads the same sizes from its .odgt lists.
            groups = orientation_groups([image_size(image) for image, _ in dataset.pairs])
            batches = GroupedBatchSampler(RandomSampler(dataset), groups, self.batch_size)
            return ResumableDataLoader(dataset, batch_sampler=batches, num_workers=self.num_workers,
                                       collate_fn=self.train_collate(),
                              persistent_workers=self.persistent_workers and self.num_workers > 0)
        # A ragged last batch is dropped (BatchNorm), but never the only one.
        return resumable_loader(dataset, self.batch_size, shuffle=True, drop_last=len(dataset) >= self.batch_size,
                                num_workers=self.num_workers, collate_fn=self.train_collate(),
                                persistent_workers=self.persistent_workers and self.num_workers > 0)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split, train=False)
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # Every image exactly once over all processes: a DistributedSampler would pad with
            # repeats, and the repeated images' areas would count twice in the summed metric.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(dataset, batch_size=1, shuffle=False, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_eval,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split)


__all__ = ["ADE20KDataModule", "ADE20KSegmentation", "EXPECTED_LAYOUT", "image_size", "list_pairs",
           "orientation_groups", "read_image", "read_label"]

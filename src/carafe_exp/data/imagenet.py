"""ImageNet in ImageFolder layout (``train/<class>/*``, ``val/<class>/*``) as a LightningDataModule.

The same reader serves the real dataset and the generated ``imagenet_sample``: with ``sample``
set, the sample is written under ``root`` first (once), then read like ImageNet.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision import datasets, transforms

from carafe_exp.data.imagefolder_sample import write_imagefolder_sample
from carafe_exp.data.sample_cache import ensure_sample
from carafe_exp.data.train_val_module import TrainValDataModule
from carafe_exp.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXPECTED_LAYOUT = "<root>/train/<class>/<image> and <root>/val/<class>/<image> (ImageFolder)"


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; a corrupt or unreadable file raises DataError naming it."""
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None


def check_imagefolder(root: Path) -> None:
    """Fail with one line naming ``root`` and the expected layout unless it looks like ImageNet."""
    if not root.is_dir():
        raise DataError(f"data.root={root} does not exist; expected {EXPECTED_LAYOUT}")
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"data.root={root} has no {split}/ directory; expected {EXPECTED_LAYOUT}")
        if not any(child.is_dir() for child in split_dir.iterdir()):
            raise DataError(f"{split_dir} has no class directories; expected {EXPECTED_LAYOUT}")
    train_classes = {p.name for p in (root / "train").iterdir() if p.is_dir()}
    val_classes = {p.name for p in (root / "val").iterdir() if p.is_dir()}
    if train_classes != val_classes:
        only = sorted(train_classes ^ val_classes)[:5]
        raise DataError(f"data.root={root}: train/ and val/ have different class folders (e.g. {only}); "
                        f"expected {EXPECTED_LAYOUT}")


class ImageNetDataModule(TrainValDataModule):
    """ImageFolder train/val with the standard ImageNet transforms; val doubles as the test split."""

    def __init__(self, root: str, batch_size: int = 32, num_workers: int = 8, image_size: int = 224,
                 resize_size: int = 256, sample: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.image_size = int(image_size)
        self.resize_size = int(resize_size)
        self.sample = dict(sample) if sample else None
        if self.sample is not None:
            self.root = ensure_sample(self.root, write_imagefolder_sample, self.sample)
        check_imagefolder(self.root)
        self.classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
        self.num_classes = len(self.classes)
        self.train_set: datasets.ImageFolder | None = None
        self.val_set: datasets.ImageFolder | None = None

    def train_transform(self) -> transforms.Compose:
        return transforms.Compose([
            transforms.RandomResizedCrop(self.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def eval_transform(self) -> transforms.Compose:
        return transforms.Compose([
            transforms.Resize(self.resize_size),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def _folder(self, split: str, transform: transforms.Compose) -> datasets.ImageFolder:
        dataset = datasets.ImageFolder(str(self.root / split), transform=transform, loader=load_rgb)
        if dataset.classes != self.classes:
            raise DataError(f"{self.root / split}: class folders differ from train/; expected {EXPECTED_LAYOUT}")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._folder("train", self.train_transform())
        if self.val_set is None:
            self.val_set = self._folder("val", self.eval_transform())

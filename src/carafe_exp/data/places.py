"""Places365 for inpainting (CARAFE Table 7, CARAFE++ Table X) as a LightningDataModule.

Two layouts under ``root`` (the first that exists wins, per split):

- Places365's file lists (``zhoubolei/places_devkit``): ``places365_train_standard.txt`` (lines
  ``/a/abbey/00000000.jpg 0``) with the images under ``data_256/``, and ``places365_val.txt``
  (lines ``Places365_val_00000001.jpg 165``) with the images under ``val_256/``. Other lists
  and folders (``places365_train_challenge.txt``, ``data_large/``) are ``train_list`` /
  ``train_dir`` / ``val_list`` / ``val_dir``.
- A plain directory of images: without the list file, every image under ``root/<train_dir>``
  (``root/<val_dir>``), at any depth, in sorted order.

Images are scaled (shorter side) and cropped to ``image_size`` (random crop for training, centre
crop for validation; Places' 256×256 images pass through unchanged), then mapped to [-1, 1] as
the papers do. Training images get a fresh free-form mask each time they are read
(:mod:`carafe_exp.data.masks`); validation image ``i`` always gets the fixed mask ``i``, written
once as PNGs under ``mask_dir``. Validation doubles as the test split (the papers test on all
of Places365 val). A batch is ``{"image": (N, 3, S, S), "mask": (N, 1, S, S) with 1 in the
hole, "index": (N,)}``. The masks live under ``mask_dir`` (default: the sample cache's
``masks/places``), never inside ``root``, which may be read-only. There are no classes: the
module has no ``num_classes``.

With ``sample`` set, the generated ``places_sample`` is written under ``root`` first (once).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms

from carafe_exp.data.imagenet import load_rgb
from carafe_exp.data.masks import (
    FreeFormMaskSettings,
    ensure_validation_masks,
    free_form_mask,
    mask_file_name,
    read_mask,
)
from carafe_exp.data.places_sample import write_places_sample
from carafe_exp.data.sample_cache import default_cache_dir, ensure_sample
from carafe_exp.data.train_val_module import TrainValDataModule
from carafe_exp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
EXPECTED_LAYOUT = ("places365_train_standard.txt + data_256/ and places365_val.txt + val_256/ "
                   "(Places365), or directories of images named by data.train_dir / data.val_dir")


def read_file_list(list_file: Path, image_dir: Path) -> list[Path]:
    """Image paths of a Places365 list file: the first field of each line, under ``image_dir``."""
    paths = []
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the image list {list_file}: {error}") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        relative = fields[0].lstrip("/")
        if not relative or len(fields) > 2:
            raise DataError(f"{list_file}:{number}: expected '<image path> [<label>]', got {line!r}")
        paths.append(image_dir / relative)
    if not paths:
        raise DataError(f"the image list {list_file} is empty; expected lines like '/a/abbey/00000000.jpg 0'")
    if not paths[0].is_file():
        raise DataError(f"{list_file} lists {paths[0].relative_to(image_dir)} but {paths[0]} does not exist; "
                        f"expected the images under {image_dir}")
    return paths


def list_images(root: Path, list_name: str | None, dir_name: str) -> list[Path]:
    """One split's images: from ``root/list_name`` when it exists, else every image under ``root/dir_name``."""
    image_dir = root / dir_name
    if list_name and (root / list_name).is_file():
        return read_file_list(root / list_name, image_dir)
    if not root.is_dir():
        raise DataError(f"data.root={root} does not exist; expected {EXPECTED_LAYOUT}")
    if not image_dir.is_dir():
        missing = f"no {list_name} and no {dir_name}/" if list_name else f"no {dir_name}/ directory"
        raise DataError(f"data.root={root} has {missing}; expected {EXPECTED_LAYOUT}")
    paths = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}); expected {EXPECTED_LAYOUT}")
    return paths


def to_signed(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [-1, 1], the papers' input range."""
    return image * 2.0 - 1.0


class PlacesImages(Dataset):
    """Images with their hole masks: a fresh free-form mask per read, or fixed mask files by index."""

    def __init__(self, paths: Sequence[Path], transform: transforms.Compose, image_size: int,
                 mask_settings: FreeFormMaskSettings, mask_dir: Path | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.image_size = image_size
        self.mask_settings = mask_settings
        self.mask_dir = mask_dir

    def __len__(self) -> int:
        return len(self.paths)

    def _mask(self, index: int) -> np.ndarray:
        if self.mask_dir is not None:
            return read_mask(self.mask_dir / mask_file_name(index), (self.image_size, self.image_size))
        # Drawn from torch's generator, which Lightning seeds per worker and the checkpoint restores,
        # so a resumed run draws the same holes as an uninterrupted one.
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, ()).item()))
        return free_form_mask(self.image_size, self.image_size, rng, self.mask_settings)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.transform(load_rgb(str(self.paths[index])))
        mask = torch.from_numpy(self._mask(index)).unsqueeze(0).float()
        return {"image": to_signed(image), "mask": mask, "index": index}


class PlacesDataModule(TrainValDataModule):
    """Places365 (or any image folder) with free-form holes; see the module docstring."""

    def __init__(self, root: str, batch_size: int = 32, num_workers: int = 8, image_size: int = 256,
                 train_list: str | None = "places365_train_standard.txt", train_dir: str = "data_256",
                 val_list: str | None = "places365_val.txt", val_dir: str = "val_256", val_limit: int | None = None,
                 hflip: bool = False, masks: Mapping[str, Any] | None = None, val_mask_seed: int = 0,
                 mask_dir: str | None = None, sample: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if val_limit is not None and int(val_limit) < 1:
            raise ConfigError(f"data.val_limit must be null (every validation image) or >= 1, got {val_limit}")
        self.root = Path(root).expanduser()
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.image_size = int(image_size)
        if self.image_size < 4 or self.image_size % 4:
            raise ConfigError(f"data.image_size must be a positive multiple of 4 (the generator downsamples "
                              f"twice), got {image_size}")
        self.train_list, self.train_dir = train_list, train_dir
        self.val_list, self.val_dir = val_list, val_dir
        self.val_limit = None if val_limit is None else int(val_limit)
        self.hflip = bool(hflip)
        try:
            self.mask_settings = FreeFormMaskSettings(**dict(masks or {}))
        except TypeError as error:
            raise ConfigError(f"data.masks: {error}") from None
        self.val_mask_seed = int(val_mask_seed)
        self.mask_dir = Path(mask_dir).expanduser() if mask_dir else default_cache_dir() / "masks" / "places"
        self.sample = dict(sample) if sample else None
        if self.sample is not None:
            self.root = ensure_sample(self.root, write_places_sample, self.sample)
        self.train_set: PlacesImages | None = None
        self.val_set: PlacesImages | None = None

    def train_transform(self) -> transforms.Compose:
        steps: list[Any] = [transforms.Resize(self.image_size), transforms.RandomCrop(self.image_size)]
        if self.hflip:
            steps.append(transforms.RandomHorizontalFlip())
        return transforms.Compose([*steps, transforms.ToTensor()])

    def eval_transform(self) -> transforms.Compose:
        return transforms.Compose([transforms.Resize(self.image_size), transforms.CenterCrop(self.image_size),
                                   transforms.ToTensor()])

    def val_paths(self) -> list[Path]:
        paths = list_images(self.root, self.val_list, self.val_dir)
        return paths[: self.val_limit] if self.val_limit is not None else paths

    def prepare_data(self) -> None:
        ensure_validation_masks(self.mask_dir, len(self.val_paths()), self.image_size, self.image_size,
                                self.val_mask_seed, self.mask_settings)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = PlacesImages(list_images(self.root, self.train_list, self.train_dir),
                                          self.train_transform(), self.image_size, self.mask_settings)
        if self.val_set is None:
            paths = self.val_paths()
            # Every rank checks (and, without a shared file system, writes) the masks it will read.
            masks = ensure_validation_masks(self.mask_dir, len(paths), self.image_size, self.image_size,
                                            self.val_mask_seed, self.mask_settings)
            self.val_set = PlacesImages(paths, self.eval_transform(), self.image_size, self.mask_settings, masks)

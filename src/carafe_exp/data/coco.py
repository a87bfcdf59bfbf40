"""COCO 2017 detection / instance segmentation: the dataset reader and the LightningDataModule.

Layout (the official one)::

    root/train2017/*.jpg   root/val2017/*.jpg
    root/annotations/instances_train2017.json   root/annotations/instances_val2017.json

Annotations are read with pycocotools after a validation pass, so a corrupt file fails with one
line naming the file and the annotation. Category ids (COCO's are 1..90 with gaps) map to
contiguous labels 1..K in sorted id order; label 0 is torchvision's background. Crowd regions
(``iscrowd=1``) are left out of the training targets (mmdetection ignores them too) and are
handled by COCOeval, which reads the real annotation file. Boxes are clipped to their image; a box
under one pixel (mmdetection's rule) or wholly outside its image (nothing is left once clipped,
and torchvision's R-CNN refuses an empty box) is left out too. Training drops images without a
usable box (mmdetection's ``filter_empty_gt``); evaluation keeps every image. Every split must
list the categories of the validation split, which fix the labels and the class count.

With ``sample`` set, the data module first generates the small COCO-format dataset of
:mod:`carafe_exp.data.coco_sample` under ``root`` (once, atomically) and then reads it with the
same reader.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, RandomSampler

from carafe_exp.data import coco_splits
from carafe_exp.data.detection_transforms import Compose, build_detection_transforms
from carafe_exp.data.group_sampler import GroupedBatchSampler, aspect_ratio_groups
from carafe_exp.data.resumable_loader import ResumableDataLoader, resumable_loader
from carafe_exp.data.split_module import SplitDataModule
from carafe_exp.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def annotation_path(root: str | os.PathLike[str], split: str) -> Path:
    """``root/annotations/instances_<split>.json`` (``image_info_<split>.json`` for test splits)."""
    return coco_splits.annotation_path(root, split)


def _validate_segmentation(seg: Any, where: str) -> None:
    if isinstance(seg, list):
        for polygon in seg:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                raise DataError(f"{where}: a polygon needs an even number (>= 6) of coordinates")
            if not all(isinstance(v, (int, float)) for v in polygon):
                raise DataError(f"{where}: polygon coordinates must be numbers")
    elif isinstance(seg, Mapping):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
            raise DataError(f"{where}: RLE needs 'size': [height, width]")
        if not isinstance(counts, (list, str)):
            raise DataError(f"{where}: RLE needs 'counts' as a list (uncompressed) or a string (compressed)")
        if isinstance(counts, list) and sum(int(c) for c in counts) != size[0] * size[1]:
            raise DataError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, not height*width "
                            f"= {size[0] * size[1]}")
    else:
        raise DataError(f"{where}: segmentation must be a list of polygons or an RLE dict, "
                        f"got {type(seg).__name__}")


def load_coco(ann_file: str | os.PathLike[str], require_segmentation: bool = False,
              unannotated: bool = False) -> COCO:
    """Read and check a COCO instances file; any problem raises one ``DataError`` line naming the file.

    ``unannotated`` reads an image-info file (test-dev), which has no ``annotations`` list.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DataError(f"COCO annotation file not found: {ann_file}")
    try:
        with ann_file.open("rb") as handle:
            dataset = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"corrupt COCO annotation file {ann_file}: {error}") from None
    if not isinstance(dataset, dict):
        raise DataError(f"corrupt COCO annotation file {ann_file}: top level is a {type(dataset).__name__}, "
                        f"not an object")
    if unannotated:
        dataset.setdefault("annotations", [])
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(dataset.get(k), list)]
    if missing:
        raise DataError(f"corrupt COCO annotation file {ann_file}: missing list(s) {missing}")
    image_ids = set()
    for image in dataset["images"]:
        if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "height", "width")):
            raise DataError(f"corrupt COCO annotation file {ann_file}: an image entry lacks id/file_name/height/width")
        image_ids.add(image["id"])
    category_ids = set()
    for category in dataset["categories"]:
        if not isinstance(category, dict) or "id" not in category:
            raise DataError(f"corrupt COCO annotation file {ann_file}: a category entry lacks 'id'")
        category_ids.add(category["id"])
    for ann in dataset["annotations"]:
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        where = f"{ann_file}: annotation {ann_id}"
        if not isinstance(ann, dict) or not all(k in ann for k in ("id", "image_id", "category_id", "bbox")):
            raise DataError(f"{where}: needs id, image_id, category_id and bbox")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DataError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DataError(f"{where}: bbox has a negative size {bbox!r}")
        if ann["image_id"] not in image_ids:
            raise DataError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise DataError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        if "segmentation" in ann:
            _validate_segmentation(ann["segmentation"], where)
        elif require_segmentation:
            raise DataError(f"{where}: has no segmentation (needed for masks)")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """One COCO split as (image tensor, torchvision detection target) pairs."""

    def __init__(self, root: str | os.PathLike[str], split: str, transforms: Compose | None = None,
                 with_masks: bool = True, remove_empty: bool = False, coco: COCO | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.ann_file = annotation_path(root, split)
        self.image_dir = coco_splits.image_dir(root, split)
        self.annotated = not coco_splits.is_unannotated(split)
        self.coco = coco if coco is not None else load_coco(self.ann_file, unannotated=not self.annotated)
        self.transforms = transforms
        self.with_masks = with_masks
        self.category_ids = sorted(self.coco.getCatIds())
        self.cat_to_label = {cat: index + 1 for index, cat in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds())
        if remove_empty:
            ids = [i for i in ids
                   if any(self._usable(a, self.coco.imgs[i]["width"], self.coco.imgs[i]["height"])
                          for a in self.coco.imgToAnns.get(i, []))]
        self.ids = ids

    @staticmethod
    def _usable(ann: Mapping[str, Any], width: float, height: float) -> bool:
        # mmdetection: crowd regions are ignored, and boxes under one pixel are dropped. A box wholly
        # outside the image would be empty once clipped, which torchvision's R-CNN rejects mid-training.
        if ann.get("iscrowd", 0):
            return False
        x, y, w, h = ann["bbox"]
        return w >= 1 and h >= 1 and min(x + w, width) > max(x, 0) and min(y + h, height) > max(y, 0)

    def __len__(self) -> int:
        return len(self.ids)

    def _load_image(self, info: Mapping[str, Any]) -> Image.Image:
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise DataError(f"COCO image missing: {path} (listed in {self.ann_file})")
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read COCO image {path}: {error}") from None

    def _mask(self, ann: Mapping[str, Any], height: int, width: int) -> np.ndarray:
        try:
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            return mask_utils.decode(rle)
        except Exception as error:  # pycocotools raises bare Exceptions on malformed RLE
            raise DataError(f"{self.ann_file}: annotation {ann.get('id')}: cannot decode segmentation: "
                            f"{error}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = self._load_image(info)
        width, height = image.size
        if (height, width) != (info["height"], info["width"]):
            raise DataError(f"COCO image {self.image_dir / info['file_name']} is {width}x{height} but "
                            f"{self.ann_file} says {info['width']}x{info['height']}")
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self._usable(a, width, height)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": int(image_id),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
            "orig_size": (height, width),
        }
        if self.with_masks:
            masks = [self._mask(a, height, width) for a in anns]
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                               else torch.zeros(0, height, width, dtype=torch.uint8))
        if self.transforms is not None:
            return self.transforms(image, target)
        return build_detection_transforms(train=False)(image, target)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor],
                                                                                     list[dict[str, Any]]]:
    """Lists of images and targets (torchvision's detection convention: images differ in size)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


class CocoDataModule(SplitDataModule):
    """COCO 2017 (or the generated sample, with ``sample``) for the detection task.

    ``min_size``/``max_size`` are the input scale of this data (800/1333 for COCO) and ``rcnn``
    the RPN/RoI budgets suited to it; the model config reads them (``model.min_size:
    ${data.min_size}``, ``model.rcnn: ${data.rcnn}``) because the resize happens once, in the
    model's transform, and a small generated sample needs smaller budgets than COCO.
    """

    def __init__(self, root: str | os.PathLike[str], batch_size: int = 2, num_workers: int = 2,
                 train_split: str = "train2017", val_split: str = "val2017", test_split: str | None = None,
                 min_size: int = 800, max_size: int = 1333, flip_prob: float = 0.5, with_masks: bool = True,
                 persistent_workers: bool = True, pin_memory: bool = False,
                 sample: Mapping[str, Any] | None = None, rcnn: Mapping[str, Any] | None = None,
                 group_by_aspect_ratio: bool = True, test_batch_size: int = 1) -> None:
        super().__init__()
        if root is None or str(root) in ("", "???"):
            raise DataError("data.root is not set: give the COCO 2017 directory (with train2017/, val2017/, "
                            "annotations/)")
        if int(batch_size) < 1:
            raise DataError(f"data.batch_size must be >= 1, got {batch_size}")
        self.root = Path(root).expanduser()
        self.batch_size = int(batch_size)
        # mmdetection v1 tests (and its benchmark times fps) one image per GPU.
        self.test_batch_size = int(test_batch_size)
        if self.test_batch_size < 1:
            raise DataError(f"data.test_batch_size must be >= 1, got {test_batch_size}")
        self.num_workers = int(num_workers)
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split or val_split
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.rcnn = dict(rcnn or {})
        self.flip_prob = float(flip_prob)
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ConfigError(f"data.flip_prob={flip_prob} is a probability: it must be in [0, 1]")
        # The detection task turns this off for models without a mask branch (no decoding cost).
        self.with_masks = bool(with_masks)
        self.persistent_workers = bool(persistent_workers)
        self.pin_memory = bool(pin_memory)
        # mmdetection v1's GroupSampler: a training batch is all landscape or all portrait.
        self.group_by_aspect_ratio = bool(group_by_aspect_ratio)
        self.sample = dict(sample) if sample is not None else None
        if self.sample is not None:
            from carafe_exp.data.coco_sample import write_coco_sample
            from carafe_exp.data.sample_cache import ensure_sample

            self.root = ensure_sample(self.root, write_coco_sample, self.sample)
        self._datasets: dict[str, CocoDetection] = {}
        self._categories: list[dict[str, Any]] | None = None

    # -- metadata the model and the metrics need before setup() -------------------------------
    @property
    def categories(self) -> list[dict[str, Any]]:
        """COCO categories sorted by id (label i+1 is ``categories[i]``), from the val annotations."""
        if self._categories is None:
            path = annotation_path(self.root, self.val_split)
            if not path.is_file():
                raise DataError(f"COCO annotation file not found: {path} (is data.root={self.root} a COCO 2017 "
                                f"directory?)")
            try:
                with path.open("rb") as handle:
                    categories = json.load(handle)["categories"]
                self._categories = sorted((dict(c) for c in categories), key=lambda c: c["id"])
            except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
                raise DataError(f"corrupt COCO annotation file {path}: {error}") from None
        return self._categories

    @property
    def num_classes(self) -> int:
        """Object categories, without background."""
        return len(self.categories)

    @property
    def label_to_category_id(self) -> list[int]:
        """``label_to_category_id[label - 1]`` is the COCO category id of contiguous label ``label``."""
        return [int(c["id"]) for c in self.categories]

    @property
    def test_annotated(self) -> bool:
        """False for a test split without public annotations (test-dev): its results go to the COCO server."""
        return not coco_splits.is_unannotated(self.test_split)

    def annotation_file(self, stage: str) -> Path:
        """The annotation file COCOeval reads for ``stage`` (validate / test)."""
        split = self.test_split if stage == "test" else self.val_split
        return annotation_path(self.root, split)

    # -- Lightning hooks -----------------------------------------------------------------------
    def _dataset(self, split: str, train: bool) -> CocoDetection:
        key = f"{split}:{'train' if train else 'eval'}"
        if key not in self._datasets:
            transforms = build_detection_transforms(train=train, flip_prob=self.flip_prob)
            self._datasets[key] = CocoDetection(self.root, split, transforms=transforms, with_masks=self.with_masks,
                                                remove_empty=train)
            log.info("COCO %s (%s): %d images", split, "train" if train else "eval", len(self._datasets[key]))
            self._check_categories(self._datasets[key])
            if len(self._datasets[key]) == 0:
                usable = " with a usable (non-crowd, at least 1 px) box" if train else ""
                raise DataError(f"{annotation_path(self.root, split)} lists no image{usable}; "
                                f"the {split} split needs at least one")
        dataset = self._datasets[key]
        dataset.with_masks = self.with_masks
        return dataset

    def _check_categories(self, dataset: CocoDetection) -> None:
        # Labels are positions in the sorted category ids: a split with other categories than the
        # validation split (which sets num_classes and the label -> category id map) would train or
        # evaluate every class under another class's id without any error.
        if dataset.category_ids != self.label_to_category_id:
            expected = annotation_path(self.root, self.val_split)
            differ = sorted(set(dataset.category_ids) ^ set(self.label_to_category_id))[:5]
            raise DataError(f"{dataset.ann_file} lists other categories than {expected} (e.g. ids {differ}); "
                            f"every split must list the same 'categories'")

    def _loader(self, dataset: CocoDetection, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size or self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_detection, pin_memory=self.pin_memory, drop_last=False,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.train_split, train=True)
        if not self.group_by_aspect_ratio:
            return resumable_loader(dataset, self.batch_size, shuffle=True, drop_last=False,
                                    num_workers=self.num_workers, collate_fn=collate_detection,
                                    pin_memory=self.pin_memory,
                                    persistent_workers=self.persistent_workers and self.num_workers > 0)
        sizes = [(dataset.coco.imgs[i]["height"], dataset.coco.imgs[i]["width"]) for i in dataset.ids]
        batches = GroupedBatchSampler(RandomSampler(dataset), aspect_ratio_groups(sizes), self.batch_size)
        return ResumableDataLoader(dataset, batch_sampler=batches, num_workers=self.num_workers,
                                   collate_fn=collate_detection, pin_memory=self.pin_memory,
                                   persistent_workers=self.persistent_workers and self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self.val_split, train=False), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self.test_split, train=False), shuffle=False,
                            batch_size=self.test_batch_size)


__all__ = ["CocoDataModule", "CocoDetection", "annotation_path", "collate_detection", "load_coco"]

"""The COCO reader, the detection transforms and the generated COCO-format sample."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from carafe_exp.data.coco import CocoDataModule, CocoDetection, annotation_path, collate_detection, load_coco
from carafe_exp.data.coco_sample import CATEGORIES, write_coco_sample
from carafe_exp.data.detection_transforms import hflip
from carafe_exp.errors import ConfigError, DataError

SAMPLE = dict(num_train=12, num_val=12, min_side=112, max_side=128, max_objects=4, crowd_prob=0.5, seed=3)


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "sample"
    write_coco_sample(root, **SAMPLE)
    return root


def _copy(sample_root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "coco"
    shutil.copytree(sample_root, target)
    return target


def test_sample_has_the_real_layout_and_covers_every_case(sample_root: Path) -> None:
    for split, count in (("train2017", SAMPLE["num_train"]), ("val2017", SAMPLE["num_val"])):
        data = json.loads(annotation_path(sample_root, split).read_text())
        assert len(data["images"]) == count
        for image in data["images"]:
            assert (sample_root / split / image["file_name"]).is_file()
    data = json.loads(annotation_path(sample_root, "train2017").read_text())
    anns = data["annotations"]
    assert [c["id"] for c in data["categories"]] == [c["id"] for c in CATEGORIES] == [1, 3, 5, 9]
    buckets = Counter("small" if a["area"] < 32 ** 2 else "medium" if a["area"] < 96 ** 2 else "large"
                      for a in anns if not a["iscrowd"])
    assert set(buckets) == {"small", "medium", "large"}
    kinds = Counter("polygon" if isinstance(a["segmentation"], list) else
                    "rle" if isinstance(a["segmentation"]["counts"], str) else "uncompressed" for a in anns)
    assert set(kinds) == {"polygon", "rle", "uncompressed"}
    assert any(a["iscrowd"] for a in anns)
    assert all(isinstance(a["segmentation"], dict) for a in anns if a["iscrowd"])
    assert {a["category_id"] for a in anns} <= {1, 3, 5, 9}


def test_sample_areas_and_boxes_are_those_of_the_masks(sample_root: Path) -> None:
    coco = load_coco(annotation_path(sample_root, "val2017"))
    for ann in coco.dataset["annotations"]:
        mask = coco.annToMask(ann)
        assert ann["area"] == pytest.approx(float(mask.sum()))
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w, y + h) == pytest.approx((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))


def test_reader_maps_categories_and_leaves_crowds_out(sample_root: Path) -> None:
    dataset = CocoDetection(sample_root, "train2017", with_masks=True)
    assert dataset.cat_to_label == {1: 1, 3: 2, 5: 3, 9: 4}
    label_to_cat = {v: k for k, v in dataset.cat_to_label.items()}
    coco = dataset.coco
    for index in range(len(dataset)):
        image, target = dataset[index]
        anns = [a for a in coco.imgToAnns[target["image_id"]] if not a["iscrowd"]]
        assert image.dtype == torch.float32 and image.shape[0] == 3 and 0.0 <= image.min() <= image.max() <= 1.0
        assert target["orig_size"] == tuple(image.shape[-2:])
        assert [label_to_cat[int(label)] for label in target["labels"]] == [a["category_id"] for a in anns]
        expected_boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                        a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)
        torch.testing.assert_close(target["boxes"], expected_boxes)
        assert target["masks"].shape == (len(anns), *image.shape[-2:])
        for mask, ann in zip(target["masks"], anns):
            assert int(mask.sum()) == int(ann["area"])


def test_training_split_drops_images_without_boxes(sample_root: Path, tmp_path: Path) -> None:
    root = _copy(sample_root, tmp_path)
    path = annotation_path(root, "train2017")
    data = json.loads(path.read_text())
    first = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first]
    path.write_text(json.dumps(data))
    assert first not in CocoDetection(root, "train2017", remove_empty=True).ids
    assert first in CocoDetection(root, "train2017", remove_empty=False).ids


def test_boxes_wholly_outside_their_image_are_left_out(sample_root: Path, tmp_path: Path) -> None:
    """A box that lies outside its image is empty once clipped; torchvision's R-CNN would refuse it
    mid-training ("All bounding boxes should have positive height and width"), so it is not a target."""
    root = _copy(sample_root, tmp_path)
    path = annotation_path(root, "train2017")
    data = json.loads(path.read_text())
    image = data["images"][0]
    outside = [dict(data["annotations"][0], id=10_000 + i, image_id=image["id"], iscrowd=0, bbox=bbox)
               for i, bbox in enumerate([[image["width"] + 5, 2, 10, 10], [2, -30, 10, 20]])]
    only_outside = data["images"][1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != only_outside["id"]]
    data["annotations"] += outside + [dict(outside[0], id=10_100, image_id=only_outside["id"],
                                           bbox=[only_outside["width"], 0, 4, 4])]
    path.write_text(json.dumps(data))
    dataset = CocoDetection(root, "train2017", remove_empty=True)
    assert only_outside["id"] not in dataset.ids
    _, target = dataset[dataset.ids.index(image["id"])]
    inside = [a for a in data["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]
              and a["id"] < 10_000]
    assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) == len(inside)
    widths, heights = target["boxes"][:, 2] - target["boxes"][:, 0], target["boxes"][:, 3] - target["boxes"][:, 1]
    assert bool((widths > 0).all() and (heights > 0).all())


def test_a_split_with_other_categories_than_val_is_refused(sample_root: Path, tmp_path: Path) -> None:
    """Labels are positions among the sorted category ids, and the val split's categories name them
    (num_classes, label -> category id): other categories in train would evaluate class i as class j."""
    root = _copy(sample_root, tmp_path)
    path = annotation_path(root, "train2017")
    data = json.loads(path.read_text())
    data["categories"][-1]["id"] = 11
    for ann in data["annotations"]:
        ann["category_id"] = 11 if ann["category_id"] == 9 else ann["category_id"]
    path.write_text(json.dumps(data))
    datamodule = CocoDataModule(root, batch_size=2, num_workers=0)
    datamodule.setup("validate")
    with pytest.raises(DataError, match=f"{path} lists other categories .*ids \\[9, 11\\]"):
        datamodule.setup("fit")


def test_flip_probability_outside_0_1_is_a_config_error(sample_root: Path) -> None:
    with pytest.raises(ConfigError, match="data.flip_prob=1.5"):
        CocoDataModule(sample_root, flip_prob=1.5)


def test_flip_mirrors_boxes_and_masks() -> None:
    image = torch.zeros(3, 4, 10)
    image[:, 1:3, 1:4] = 1.0
    masks = (image[0] > 0).to(torch.uint8)[None]
    target = {"boxes": torch.tensor([[1.0, 1.0, 4.0, 3.0]]), "masks": masks}
    flipped, flipped_target = hflip(image, target)
    torch.testing.assert_close(flipped_target["boxes"], torch.tensor([[6.0, 1.0, 9.0, 3.0]]))
    ys, xs = torch.nonzero(flipped_target["masks"][0], as_tuple=True)
    assert (int(xs.min()), int(xs.max()) + 1) == (6, 9)
    torch.testing.assert_close(flipped[0], flipped_target["masks"][0].float())


def test_missing_image_names_the_file(sample_root: Path, tmp_path: Path) -> None:
    root = _copy(sample_root, tmp_path)
    dataset = CocoDetection(root, "val2017")
    missing = root / "val2017" / dataset.coco.imgs[dataset.ids[0]]["file_name"]
    missing.unlink()
    with pytest.raises(DataError, match=str(missing)) as info:
        dataset[0]
    assert "\n" not in str(info.value)


def test_corrupt_annotation_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.parent.mkdir()
    path.write_text('{"images": [')
    with pytest.raises(DataError, match=str(path)):
        load_coco(path)


@pytest.mark.parametrize("field, value, message", [
    ("bbox", [1, 2, 3], "bbox"),
    ("segmentation", [[1, 2, 3]], "polygon"),
    ("segmentation", {"size": [4, 4], "counts": [1, 2]}, "RLE"),
    ("category_id", 77, "category_id"),
])
def test_corrupt_annotation_names_file_and_annotation(sample_root: Path, tmp_path: Path, field: str,
                                                      value: object, message: str) -> None:
    root = _copy(sample_root, tmp_path)
    path = annotation_path(root, "val2017")
    data = json.loads(path.read_text())
    data["annotations"][0][field] = value
    path.write_text(json.dumps(data))
    ann_id = data["annotations"][0]["id"]
    with pytest.raises(DataError, match=f"{path}: annotation {ann_id}: .*{message}"):
        load_coco(path)


def test_data_module_generates_the_sample_and_batches_lists(tmp_path: Path) -> None:
    params = dict(SAMPLE, num_train=4, num_val=3)
    datamodule = CocoDataModule(tmp_path / "coco", batch_size=2, num_workers=0, sample=params)
    assert datamodule.num_classes == 4
    assert datamodule.label_to_category_id == [1, 3, 5, 9]
    assert datamodule.annotation_file("test") == annotation_path(tmp_path / "coco", "val2017")
    datamodule.setup("fit")
    images, targets = next(iter(datamodule.train_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    datamodule.with_masks = False
    _, targets = next(iter(datamodule.val_dataloader()))
    assert "masks" not in targets[0]
    assert collate_detection([]) == ([], [])


def test_data_module_needs_a_root() -> None:
    with pytest.raises(DataError, match="data.root"):
        CocoDataModule("???")

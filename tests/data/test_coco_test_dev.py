"""COCO test-dev: the sample writes it as COCO publishes it, the reader takes it without annotations,
and the results file has the evaluation server's name, zip layout and entry format."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from carafe_exp.data.coco import CocoDataModule, CocoDetection, load_coco
from carafe_exp.data.coco_sample import write_coco_sample
from carafe_exp.data.coco_splits import annotation_path, image_dir, is_unannotated
from carafe_exp.metrics.coco import detections_to_coco
from carafe_exp.metrics.coco_results import results_name, write_server_results


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    write_coco_sample(root, num_train=2, num_val=2, num_test=3, min_side=112, max_side=120)
    return root


def test_layout_of_the_test_dev_split(sample_root: Path) -> None:
    # COCO 2017: test-dev images live in test2017/, listed by annotations/image_info_test-dev2017.json.
    assert is_unannotated("test-dev2017") and not is_unannotated("val2017")
    assert annotation_path(sample_root, "test-dev2017") == sample_root / "annotations/image_info_test-dev2017.json"
    assert image_dir(sample_root, "test-dev2017") == sample_root / "test2017"
    info = json.loads(annotation_path(sample_root, "test-dev2017").read_text())
    assert "annotations" not in info and len(info["images"]) == 3 and len(info["categories"]) == 4
    # Adding the test split keeps the annotated splits as they were.
    other = sample_root.parent / "coco_without_test"
    write_coco_sample(other, num_train=2, num_val=2, min_side=112, max_side=120)
    assert (other / "annotations/instances_val2017.json").read_text() == (
        sample_root / "annotations/instances_val2017.json").read_text()


def test_reader_takes_the_unannotated_split(sample_root: Path) -> None:
    dataset = CocoDetection(sample_root, "test-dev2017")
    assert len(dataset) == 3 and not dataset.annotated
    image, target = dataset[0]
    assert image.shape[0] == 3 and target["boxes"].shape == (0, 4)
    with pytest.raises(Exception, match="missing list"):
        load_coco(annotation_path(sample_root, "test-dev2017"))  # as an instances file it lacks annotations
    datamodule = CocoDataModule(sample_root, test_split="test-dev2017", num_workers=0)
    assert not datamodule.test_annotated and datamodule.test_dataloader().batch_size == 1


def test_server_results_zip(sample_root: Path, tmp_path: Path) -> None:
    info = json.loads(annotation_path(sample_root, "test-dev2017").read_text())
    per_image = {}
    for index, image in enumerate(info["images"]):
        masks = torch.zeros(2, 1, image["height"], image["width"])
        masks[0, 0, 10:40, 20:50] = 0.9
        masks[1, 0, 50:60, 5:25] = 0.7
        prediction = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 40.0], [5.0, 50.0, 25.0, 60.0]]),
                      "scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([1, 4]), "masks": masks}
        per_image[image["id"]] = detections_to_coco(image["id"], prediction, [1, 3, 5, 9])
    paths = write_server_results(per_image, tmp_path, "test-dev2017", "carafe exp_mask", ("bbox", "segm"))
    assert [p.name for p in paths] == ["detections_test-dev2017_carafe-exp-mask-bbox_results.zip",
                                       "detections_test-dev2017_carafe-exp-mask-segm_results.zip"]
    gt = COCO(str(annotation_path(sample_root, "test-dev2017")))
    for path, iou_type in zip(paths, ("bbox", "segm")):
        with zipfile.ZipFile(path) as archive:
            assert archive.namelist() == [path.stem + ".json"]
            results = json.loads(archive.read(path.stem + ".json"))
        assert len(results) == 2 * 3
        assert {r["category_id"] for r in results} == {1, 9}
        assert ("segmentation" in results[0]) == (iou_type == "segm")
        loaded = gt.loadRes(results)  # what the server does with a submission
        assert len(loaded.getAnnIds()) == 6
        if iou_type == "segm":
            areas = sorted({round(a["area"]) for a in loaded.anns.values()})
            assert areas == [200, 900]  # 10x20 and 30x30 pixel masks, as RLE
    assert "_" not in results_name("test-dev2017", "a_b c").split("_", 2)[2].removesuffix("_results")
    assert np.isclose(results[0]["score"], 0.9)

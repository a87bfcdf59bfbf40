"""ADE20K reader and pipelines (carafe_exp.data.ade20k): the real layout, the sample, and bad inputs.

Layout and labels: ADEChallengeData2016 (images/{training,validation}/*.jpg,
annotations/.../*.png; 0 = other, 1-150 = classes; mmseg ``reduce_zero_label``). Pipelines: the
CARAFE supplement §1 scales and CSAIL ``dataset.py`` (pad to 32 for training, resize to a
multiple of 32 for testing).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carafe_exp.data.ade20k import ADE20KDataModule, ADE20KSegmentation, list_pairs
from carafe_exp.data.ade20k_classes import ADE20K_CLASSES
from carafe_exp.data.ade20k_sample import SAMPLE_CLASSES, write_ade20k_sample
from carafe_exp.data.sample_cache import ensure_sample
from carafe_exp.data.segmentation_transforms import IGNORE_INDEX, EvalTransform, TrainBatch, scaled_size
from carafe_exp.errors import ConfigError, DataError

SAMPLE = {"num_train": 6, "num_val": 3, "min_side": 40, "max_side": 70, "seed": 3}


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_sample(tmp_path_factory.mktemp("ade") / "ade20k", write_ade20k_sample, SAMPLE)


def copy_of(sample_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(sample_root, root)
    return root


def test_class_list_is_ade20k_150() -> None:
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES))
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[2] == "sky" and ADE20K_CLASSES[-1] == "flag"


def test_sample_has_the_real_layout_and_encoding(sample_root: Path) -> None:
    images = sorted((sample_root / "images" / "training").glob("*.jpg"))
    labels = sorted((sample_root / "annotations" / "training").glob("*.png"))
    assert [p.name for p in images][:2] == ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg"]
    assert [p.stem for p in images] == [p.stem for p in labels] and len(images) == SAMPLE["num_train"]
    assert len(list((sample_root / "images" / "validation").glob("ADE_val_*.jpg"))) == SAMPLE["num_val"]
    with Image.open(images[0]) as grey, Image.open(labels[0]) as label:
        assert grey.mode == "L" and label.mode == "L"  # one greyscale image; 8-bit single-channel labels
    values = set()
    for path in labels:
        values |= set(np.unique(np.asarray(Image.open(path))).tolist())
    assert 0 in values and values - {0} <= set(SAMPLE_CLASSES) and len(values - {0}) >= 5


def test_reader_maps_labels_and_reads_greyscale_as_rgb(sample_root: Path) -> None:
    dataset = ADE20KSegmentation(sample_root, "training")
    image, label, index = dataset[0]
    assert index == 0 and image.dtype == torch.uint8 and image.shape[0] == 3
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # the greyscale image
    raw = torch.from_numpy(np.asarray(Image.open(dataset.pairs[0][1])).astype(np.int64))
    assert torch.equal(label.long() == IGNORE_INDEX, raw == 0)
    assert torch.equal(label.long()[raw > 0], raw[raw > 0] - 1)  # ADE value i is class i - 1
    assert label.shape == image.shape[1:]


def test_training_batches_follow_the_paper_pipeline(sample_root: Path) -> None:
    datamodule = ADE20KDataModule(sample_root, batch_size=3, num_workers=0, train_short_sides=[48, 56],
                                  max_long_side=60)
    datamodule.setup("fit")
    torch.manual_seed(0)
    for images, labels in datamodule.train_dataloader():
        assert images.dtype == torch.float32 and labels.dtype == torch.uint8
        assert images.shape[0] == labels.shape[0] == 3 and images.shape[-2:] == labels.shape[-2:]
        assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0
        # Every image was scaled to short side 48 or 56 unless its long side reached 60.
        for label in labels:
            valid_rows = int((label != IGNORE_INDEX).any(dim=1).nonzero().max()) + 1
            valid_cols = int((label != IGNORE_INDEX).any(dim=0).nonzero().max()) + 1
            assert max(valid_rows, valid_cols) <= 60
        assert (labels == IGNORE_INDEX).any()  # padding (and unlabelled pixels) are ignored


def test_flip_moves_image_and_label_together() -> None:
    image = torch.arange(2 * 3, dtype=torch.uint8).repeat(3, 1).reshape(3, 2, 3) * 20
    label = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.uint8)
    collate = TrainBatch([2], max_long_side=3, flip_prob=1.0, size_divisor=1, mean=(0, 0, 0), std=(1, 1, 1))
    images, labels = collate([(image, label, 0)])
    assert torch.equal(labels[0], label.flip(-1))
    assert torch.allclose(images[0] * 255, image.flip(-1).float())


def test_test_images_are_resized_to_a_multiple_of_32_and_labels_kept() -> None:
    transform = EvalTransform(short_side=450, max_long_side=1200)
    image = torch.zeros(3, 300, 500, dtype=torch.uint8)
    assert scaled_size(300, 500, 450, 1200) == (450, 750)
    assert transform(image).shape == (3, 480, 768)  # 450 -> 480 and 750 -> 768, by resizing
    assert scaled_size(100, 1000, 450, 1200) == (120, 1200)  # the long side caps the scale


def test_evaluation_batches_keep_original_labels(sample_root: Path) -> None:
    datamodule = ADE20KDataModule(sample_root, num_workers=0, test_short_side=50, max_long_side=80)
    datamodule.setup("test")
    images, labels, indices = next(iter(datamodule.test_dataloader()))
    raw = np.asarray(Image.open(datamodule._dataset("validation", train=False).pairs[0][1]))
    assert len(images) == 1 and indices == [0] and labels[0].shape == raw.shape
    assert images[0].shape[-2] % 32 == 0 and images[0].shape[-1] % 32 == 0
    assert datamodule.num_classes == 150 and datamodule.class_names[12] == "person"


def _damage(root: Path, kind: str) -> str:
    images, labels = root / "images" / "training", root / "annotations" / "training"
    if kind == "missing_root":
        shutil.rmtree(root)
        return str(root)
    if kind == "no_label":
        (labels / "ADE_train_00000002.png").unlink()
        return f"{images / 'ADE_train_00000002.jpg'} has no label"
    if kind == "no_image":
        (images / "ADE_train_00000003.jpg").unlink()
        return f"{labels / 'ADE_train_00000003.png'} has no image"
    if kind == "corrupt_image":
        (images / "ADE_train_00000002.jpg").write_bytes(b"not a jpeg")
        return f"cannot read ADE20K image {images / 'ADE_train_00000002.jpg'}"
    if kind == "size_mismatch":
        Image.new("L", (13, 11)).save(labels / "ADE_train_00000002.png")
        return f"{images / 'ADE_train_00000002.jpg'} is"
    if kind == "rgb_label":
        Image.new("RGB", (8, 8)).save(labels / "ADE_train_00000002.png")
        return f"ADE20K label {labels / 'ADE_train_00000002.png'} is a RGB image"
    if kind == "label_value":
        with Image.open(labels / "ADE_train_00000002.png") as label:
            array = np.asarray(label).copy()
        array[0, 0] = 151
        Image.fromarray(array, mode="L").save(labels / "ADE_train_00000002.png")
        return f"ADE20K label {labels / 'ADE_train_00000002.png'} holds value 151"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing_root", "no_label", "no_image", "corrupt_image", "size_mismatch",
                                  "rgb_label", "label_value"])
def test_bad_inputs_fail_with_one_line_naming_the_file(sample_root: Path, tmp_path: Path, kind: str) -> None:
    root = copy_of(sample_root, tmp_path)
    expected = _damage(root, kind)
    with pytest.raises(DataError) as error:
        datamodule = ADE20KDataModule(root, num_workers=0)
        datamodule.setup("fit")
        dataset = datamodule._dataset("training", train=True)
        for index in range(len(dataset)):
            dataset[index]
    message = str(error.value)
    assert expected in message and "\n" not in message, message


@pytest.mark.parametrize("flip_prob", [-0.5, 2.0])
def test_flip_probability_outside_0_1_is_a_config_error(sample_root: Path, flip_prob: float) -> None:
    with pytest.raises(ConfigError, match=rf"data.flip_prob={flip_prob} is a probability: it must be in \[0, 1\]"):
        ADE20KDataModule(sample_root, flip_prob=flip_prob)


def test_list_pairs_names_the_expected_layout(tmp_path: Path) -> None:
    (tmp_path / "images" / "training").mkdir(parents=True)
    with pytest.raises(DataError, match=r"annotations/training; expected <root>/images"):
        list_pairs(tmp_path, "training")

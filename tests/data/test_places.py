"""The Places reader: Places365 file lists and plain folders, fixed validation masks, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carafe_exp.data.masks import validation_mask
from carafe_exp.data.places import PlacesDataModule
from carafe_exp.data.places_sample import write_places_sample
from carafe_exp.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def places_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("places")
    write_places_sample(root, num_train=6, num_val=5, seed=0)
    return root


def _module(root: Path, tmp_path: Path, **kwargs) -> PlacesDataModule:
    options = dict(batch_size=2, num_workers=0, image_size=32, mask_dir=str(tmp_path / "masks"))
    options.update(kwargs)
    module = PlacesDataModule(str(root), **options)
    module.prepare_data()
    module.setup("fit")
    return module


def test_sample_has_the_places365_layout(places_root: Path) -> None:
    train = (places_root / "places365_train_standard.txt").read_text().splitlines()
    val = (places_root / "places365_val.txt").read_text().splitlines()
    assert train[0] == "/b/beach/00000001.jpg 48" and len(train) == 6
    assert val[0] == "Places365_val_00000001.jpg 48" and len(val) == 5
    assert (places_root / "data_256" / "b" / "beach" / "00000001.jpg").is_file()
    with Image.open(places_root / "val_256" / "Places365_val_00000001.jpg") as image:
        assert image.size == (256, 256) and image.mode == "RGB"


def test_batches_images_masks_indices(places_root: Path, tmp_path: Path) -> None:
    module = _module(places_root, tmp_path)
    assert not hasattr(module, "num_classes")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 1, 32, 32)
    assert -1.0 <= batch["image"].min() < 0 < batch["image"].max() <= 1.0
    assert set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    val = next(iter(module.val_dataloader()))
    assert val["index"].tolist() == [0, 1]
    # The same scene, read by the reader at 32², is the file scaled down: the reader does not crop it away.
    with Image.open(places_root / "val_256" / "Places365_val_00000001.jpg") as image:
        expected = torch.from_numpy(np.asarray(image.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 127.5 - 1)
    assert (val["image"][0].permute(1, 2, 0) - expected).abs().mean() < 0.05


def test_validation_masks_are_fixed_and_training_masks_are_fresh(places_root: Path, tmp_path: Path) -> None:
    first = _module(places_root, tmp_path, val_mask_seed=3)
    second = _module(places_root, tmp_path, val_mask_seed=3)
    masks_a = torch.cat([b["mask"] for b in first.val_dataloader()])
    masks_b = torch.cat([b["mask"] for b in second.val_dataloader()])
    again = torch.cat([b["mask"] for b in first.val_dataloader()])
    assert torch.equal(masks_a, masks_b) and torch.equal(masks_a, again)
    for index in range(5):
        assert np.array_equal(masks_a[index, 0].numpy() > 0, validation_mask(index, 32, 32, seed=3))
    torch.manual_seed(0)
    train_a = first.train_set[0]["mask"]
    train_b = first.train_set[0]["mask"]
    assert not torch.equal(train_a, train_b)


def test_plain_directory_of_images(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for split, count in (("train", 3), ("val", 2)):
        (root / split / "nested").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 30), (10 * i, 100, 200)).save(root / split / "nested" / f"{i}.png")
    module = _module(root, tmp_path, train_dir="train", val_dir="val")
    assert len(module.train_set) == 3 and len(module.val_set) == 2
    image = module.val_set[1]["image"]
    assert image.shape == (3, 32, 32)  # shorter side scaled to 32, centre crop
    assert image[0].mean().item() == pytest.approx(10 / 127.5 - 1, abs=0.02)


def test_corrupt_image_names_the_file(places_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    write_places_sample(root, num_train=2, num_val=2, seed=1)
    broken = root / "val_256" / "Places365_val_00000002.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    module = _module(root, tmp_path)
    with pytest.raises(DataError, match=f"cannot read image {broken}"):
        module.val_set[1]


def test_missing_root_and_missing_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.root=.*nowhere does not exist; expected places365_train_standard.txt"):
        _module(tmp_path / "nowhere", tmp_path)
    root = tmp_path / "lists_only"
    root.mkdir()
    (root / "places365_val.txt").write_text("Places365_val_00000001.jpg 3\n")
    with pytest.raises(DataError, match=r"lists Places365_val_00000001.jpg but .*val_256/Places365_val_00000001.jpg "
                                        r"does not exist"):
        _module(root, tmp_path)
    (root / "places365_val.txt").write_text("a b c\n")
    with pytest.raises(DataError, match=r"places365_val.txt:1: expected '<image path> \[<label>\]'"):
        _module(root, tmp_path)


def test_bad_settings_are_config_errors(places_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiple of 4"):
        PlacesDataModule(str(places_root), image_size=30)
    with pytest.raises(ConfigError, match="data.masks"):
        PlacesDataModule(str(places_root), masks={"max_stroke": 2})


@pytest.mark.parametrize(("option", "message"), [
    # 0 left no validation images (a run without L1 / PSNR); -1 silently dropped the last image.
    ({"val_limit": 0}, r"data.val_limit must be null \(every validation image\) or >= 1, got 0"),
    ({"val_limit": -1}, r"data.val_limit must be null \(every validation image\) or >= 1, got -1"),
])
def test_val_limit_below_one_is_a_config_error(places_root: Path, tmp_path: Path, option: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PlacesDataModule(str(places_root), mask_dir=str(tmp_path / "masks"), **option)

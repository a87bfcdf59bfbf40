"""Segmentation settings the papers leave to CSAIL's code (issue #19 §2), each pinned to its source.

- Resizing and ×4 label subsampling: the pinned CSAIL code is mit-semseg 1.0.0 ``dataset.py`` (PIL's
  ``imresize``: bilinear images, nearest labels, nearest ×4 subsampling of the label).
- Batches of one orientation: ``TrainDataset._get_sub_batch`` (h > w vs h ≤ w), on in setting=csail_upernet.
- Resampler initialisation: CSAIL's ``ModelBuilder.build_decoder`` applies ``weights_init`` to every module
  of the decoder (``model.resampler_init=csail``); the default keeps the resamplers' own.
- CARAFE Tables 5–6 use CSAIL's deep-stem ResNet; CARAFE++ Tables VIII–IX the torchvision stem of their
  pretraining runs (CARAFE++ §5.2: ImageNet settings "mostly follow [11]", Goyal et al.'s ResNet).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from reference_packages import import_reference

from carafe_exp.data.ade20k import ADE20KDataModule, image_size, orientation_groups
from carafe_exp.data.segmentation_transforms import normalize, resize_image, resize_label
from carafe_exp.models.upernet import build_upernet
from carafe_exp.paths import config_dir
from carafe_exp.tasks.segmentation import downsample_labels

CARAFE_UP = {"name": "carafe", "k_up": 5, "k_encoder": 3, "c_m": 8, "normalizer": "softmax", "groups": 1}


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_resizing_and_label_subsampling_follow_mit_semseg() -> None:
    dataset = import_reference("mit_semseg.dataset")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    label = rng.integers(0, 151, (37, 53), dtype=np.uint8)
    size = (29, 41)  # (h, w); CSAIL's imresize takes (w, h)
    expected_image = np.asarray(dataset.imresize(Image.fromarray(image), (size[1], size[0]), interp="bilinear"))
    expected_label = np.asarray(dataset.imresize(Image.fromarray(label), (size[1], size[0]), interp="nearest"))
    ours_image = resize_image(torch.from_numpy(image).permute(2, 0, 1), size).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours_image, expected_image)
    np.testing.assert_array_equal(resize_label(torch.from_numpy(label), size).numpy(), expected_label)
    # x4 subsampling of a label already a multiple of 4 (TrainDataset pads it so): PIL nearest, pixel 4i + 2.
    padded = rng.integers(0, 151, (32, 48), dtype=np.uint8)
    expected = np.asarray(dataset.imresize(Image.fromarray(padded), (12, 8), interp="nearest"))
    np.testing.assert_array_equal(downsample_labels(torch.from_numpy(padded), (8, 12)).numpy(), expected)


def test_csail_bgr_normalisation() -> None:
    # CSAIL's earlier dataset.py (CSAILVision/semantic-segmentation-pytorch@1b8371a, BaseDataset): BGR (cv2),
    # float 0-255, Normalize(mean=[102.9801, 115.9465, 122.7717], std=[1, 1, 1]).
    image = torch.tensor([[[10]], [[20]], [[30]]], dtype=torch.uint8)  # R, G, B
    out = normalize(image, (0.0,) * 3, (1.0,) * 3, "csail_bgr")
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([30 - 102.9801, 20 - 115.9465, 10 - 122.7717]))


def test_batches_hold_one_orientation(tmp_path: Path) -> None:
    # TrainDataset: "classify images into two classes: 1. h > w and 2. h <= w"; a square is landscape.
    assert orientation_groups([(5, 5), (6, 5), (5, 6)]) == [1, 0, 1]
    data = ADE20KDataModule(tmp_path / "ade", batch_size=4, num_workers=0, persistent_workers=False,
                            group_by_orientation=True, train_short_sides=[64], max_long_side=160,
                            sample={"num_train": 16, "num_val": 1, "min_side": 72, "max_side": 120, "seed": 0})
    loader = data.train_dataloader()
    pairs = loader.dataset.pairs
    groups = orientation_groups([image_size(image) for image, _ in pairs])
    assert len(set(groups)) == 2, "the sample must hold both orientations for this test to mean anything"
    batches = list(loader.batch_sampler)
    assert len(batches) == 4
    assert all(len({groups[i] for i in batch}) == 1 for batch in batches)
    images, labels = next(iter(loader))
    assert images.shape[0] == 4 and labels.shape[0] == 4


def test_resampler_init_csail_reinitialises_the_resamplers_in_the_decoder() -> None:
    def encoder_std(resampler_init: str) -> float:
        torch.manual_seed(0)
        model = build_upernet(4, upsampler=CARAFE_UP, sites={"fpn": True}, backbone={"depth": 18}, channels=16,
                              resampler_init=resampler_init)
        return float(model.decode_head.fpn_upsamplers[0].kernel_predictor.encoder.weight.detach().std())

    # mmcv's CARAFEPack: content encoder N(0, 0.001); CSAIL's weights_init: Kaiming normal, std sqrt(2 / fan_in).
    assert encoder_std("own") == pytest.approx(0.001, rel=0.2)
    assert encoder_std("csail") == pytest.approx((2 / (8 * 3 * 3)) ** 0.5, rel=0.2)
    with pytest.raises(Exception, match="resampler_init"):
        encoder_std("mmseg")


def test_table_settings_follow_the_papers_pretraining() -> None:
    carafe = _compose(["experiment=carafe/table5"])
    assert carafe.model.backbone.stem == "deep"
    assert carafe.model.bn_stats == "csail" and carafe.data.group_by_orientation is True
    assert _compose(["experiment=carafe/table6"]).model.backbone.stem == "deep"
    for table in ("table8", "table9"):
        assert _compose([f"experiment=carafe_pp/{table}"]).model.backbone.stem == "torchvision"
    plain = _compose(["task=segmentation"])
    assert plain.model.backbone.stem == "torchvision" and plain.data.group_by_orientation is False

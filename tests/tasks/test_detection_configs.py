"""The detection configs compose into the objects the CLI builds, with the papers' settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from carafe_exp.models.build import build_model
from carafe_exp.data.coco import CocoDataModule
from carafe_exp.models.mask_head import ResampledMaskPredictor
from carafe_exp.paths import config_dir
from carafe_exp.tasks.detection import DetectionTask
from carafe_exp.tasks.optim import lr_factor


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _plain(node) -> object:  # noqa: ANN001
    return OmegaConf.to_container(node, resolve=True)


def test_detection_task_builds_faster_rcnn_with_carafe_in_the_fpn(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("CARAFE_EXP_CACHE", str(tmp_path))
    cfg = _compose(["task=detection", "upsampler=carafe", "data.sample.num_train=2", "data.sample.num_val=2"])
    assert cfg.task.module.optimizer.lr == 0.02 and cfg.task.module.optimizer.base_batch_size == 16
    assert cfg.task.monitor == "val/bbox/AP"
    from carafe_exp.runs.loop import node_arguments

    # `kind` describes the data for the task check; it is not an argument of the data module.
    datamodule = instantiate(node_arguments(cfg.data, "kind"))
    assert isinstance(datamodule, CocoDataModule) and datamodule.num_classes == 4
    assert Path(datamodule.root) == tmp_path / "samples" / "coco"
    model = build_model(cfg.model, num_classes=datamodule.num_classes, upsampler=cfg.upsampler,
                        downsampler=cfg.downsampler)
    assert type(model.backbone.fpn.upsamplers[0]).registry_name == "carafe"
    assert model.transform.min_size == (datamodule.min_size,)
    task = instantiate(cfg.task.module, model=model, schedule=_plain(cfg.schedule), _convert_="all")
    assert isinstance(task, DetectionTask) and task.iou_types == ("bbox",)


def test_mask_rcnn_mask_head_site_uses_the_mask_head_kernel(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("CARAFE_EXP_CACHE", str(tmp_path))
    cfg = _compose(["task=detection", "model=mask_rcnn", "upsampler=carafe", "model.sites.mask_head=true",
                    "data.sample.num_train=2", "data.sample.num_val=2"])
    model = build_model(cfg.model, num_classes=4, upsampler=cfg.upsampler, downsampler=cfg.downsampler)
    predictor = model.roi_heads.mask_predictor
    assert isinstance(predictor, ResampledMaskPredictor)
    # mmdetection's CARAFE Mask R-CNN configs: k_up=5, k_encoder=3, c_m=64 in the mask head as in the FPN.
    assert predictor.conv5_mask.kernel_size == 5
    assert model.backbone.fpn.upsamplers[0].kernel_size == 5
    task = instantiate(cfg.task.module, model=model, schedule=_plain(cfg.schedule), _convert_="all")
    assert task.iou_types == ("bbox", "segm")


def test_coco_config_has_the_paper_input_scale_and_needs_a_root() -> None:
    cfg = _compose(["task=detection", "data=coco"])
    assert cfg.data.min_size == 800 and cfg.data.max_size == 1333 and cfg.data.sample is None
    assert OmegaConf.is_missing(cfg.data, "root")
    cfg = _compose(["task=detection", "data=coco", "data.root=/data/coco", "model.fpn_style=torchvision"])
    assert cfg.model.min_size == 800 and cfg.model.fpn_style == "torchvision"


@pytest.mark.parametrize("schedule, epochs, milestones", [("1x", 12, [8, 11]), ("2x", 24, [16, 22])])
def test_paper_schedules(schedule: str, epochs: int, milestones: list[int]) -> None:
    cfg = _compose(["task=detection", f"schedule={schedule}"])
    plain = _plain(cfg.schedule)
    assert plain["max_epochs"] == epochs and plain["milestones"] == milestones and plain["warmup_iters"] == 500
    steps_per_epoch = 100
    kwargs = dict(total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch, policy=plain["policy"],
                  milestones=plain["milestones"], gamma=plain["gamma"], warmup_iters=plain["warmup_iters"],
                  warmup_factor=plain["warmup_factor"])
    # mmdetection v1: linear warm-up from 1/3 of the lr (warmup_ratio=1.0 / 3).
    assert plain["warmup_scales_with_batch"] is True
    assert lr_factor(0, **kwargs) == pytest.approx(1 / 3)
    assert lr_factor(600, **kwargs) == pytest.approx(1.0)
    assert lr_factor(milestones[0] * steps_per_epoch, **kwargs) == pytest.approx(0.1)
    assert lr_factor(milestones[1] * steps_per_epoch, **kwargs) == pytest.approx(0.01)

"""The segmentation task's paper settings: loss resolution, no weight decay on norm/bias, poly 100k.

Sources: CSAIL semantic-segmentation-pytorch ``train.py`` (NLLLoss at 1/4 resolution against
labels downsampled x4 by nearest, ``segm_downsampling_rate=4``; ``group_weight``: no weight
decay on BatchNorm and biases; lr = 0.02·(1 − it/max_iter)^0.9 every iteration, 100k
iterations = 20 CSAIL epochs of 5000) and the CARAFE supplement §1 (SGD 0.02, momentum 0.9,
weight decay 1e-4, batch 16, poly power 0.9).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.upernet import build_upernet
from carafe_exp.paths import config_dir
from carafe_exp.tasks.optim import build_lr_scheduler
from carafe_exp.tasks.segmentation import SegmentationTask, downsample_labels, segmentation_loss

IGNORE = 255


def compose_with(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_quarter_loss_uses_the_centre_label_of_each_4x4_cell() -> None:
    # PIL's nearest neighbour (mit-semseg 1.0.0 dataset.py, the pinned CSAIL code): pixel 4i + 2.
    labels = torch.full((1, 8, 8), IGNORE, dtype=torch.uint8)
    labels[0, 2, 2], labels[0, 2, 6], labels[0, 6, 2], labels[0, 6, 6] = 1, 2, IGNORE, 0
    labels[0, 0:2, 0:2] = 2  # the rest of the top-left cell does not count
    logits = torch.randn(1, 3, 2, 2)
    assert downsample_labels(labels, (2, 2)).tolist() == [[[1, 2], [IGNORE, 0]]]
    log_probs = F.log_softmax(logits, dim=1)[0]
    expected = -(log_probs[1, 0, 0] + log_probs[2, 0, 1] + log_probs[0, 1, 1]) / 3
    torch.testing.assert_close(segmentation_loss(logits, labels, "quarter", IGNORE), expected)


def test_full_loss_upsamples_the_logits_bilinearly() -> None:
    logits = torch.randn(2, 4, 3, 5)
    labels = torch.randint(0, 4, (2, 12, 20), dtype=torch.uint8)
    labels[:, :2] = IGNORE
    upsampled = F.interpolate(logits, size=(12, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(segmentation_loss(logits, labels, "full", IGNORE),
                               F.cross_entropy(upsampled, labels.long(), ignore_index=IGNORE))


def test_an_all_ignored_batch_gives_zero_loss_not_nan() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 8, 8), IGNORE, dtype=torch.uint8))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def tiny_task(**options) -> SegmentationTask:
    model = build_upernet(4, upsampler="carafe", sites={"ppm": True, "fpn": True, "fuse": True},
                          backbone={"depth": 18}, channels=8)
    return SegmentationTask(model, {"name": "sgd", "lr": 0.02, "base_batch_size": 16, "weight_decay": 1e-4},
                            {"policy": "poly"}, **options)


def test_no_weight_decay_on_norm_and_bias_parameters() -> None:
    task = tiny_task()
    decay, no_decay = task.parameter_groups()
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    names = {id(p): n for n, p in task.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    assert all(p.ndim == 4 for p in decay["params"])  # conv weights (CARAFE's kernel predictors included)
    assert "model.backbone.bn1.weight" in exempt and "model.decode_head.conv_last.1.bias" in exempt
    assert "model.decode_head.fpn_upsamplers.0.kernel_predictor.encoder.bias" in exempt
    assert "model.decode_head.conv_last.1.weight" in decayed
    everything = tiny_task(norm_bias_weight_decay=True).parameter_groups()
    assert len(everything) == len(list(task.parameters()))  # the switch gives one plain list


def test_bad_task_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="loss_resolution must be one of"):
        tiny_task(loss_resolution="half")
    with pytest.raises(ConfigError, match="segmentation model"):
        SegmentationTask(nn.Linear(2, 2), {"name": "sgd", "lr": 0.1}, {})


def test_task_config_is_the_papers_setting() -> None:
    cfg = compose_with(["task=segmentation"])
    assert cfg.model._target_.endswith("build_upernet") and cfg.upsampler.name == "bilinear"
    assert cfg.data.kind in cfg.task.data_kinds and cfg.data.kind == "ade20k"
    optimizer = cfg.task.module.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.base_batch_size, optimizer.momentum,
            optimizer.weight_decay) == ("sgd", 0.02, 16, 0.9, 1e-4)
    assert cfg.task.module.loss_resolution == "quarter" and not cfg.task.module.norm_bias_weight_decay
    assert not cfg.model.aux_head and cfg.task.module.aux_weight == 0.4 and cfg.model.channels == 512
    assert list(cfg.model.pool_scales) == [1, 2, 3, 6] and not cfg.model.ppm_conv_first
    real = compose_with(["task=segmentation", "data=ade20k"]).data
    assert list(real.train_short_sides) == [300, 375, 450, 525, 600]
    assert (real.test_short_side, real.max_long_side, real.batch_size, real.size_divisor) == (450, 1200, 2, 32)


def test_poly_100k_schedule_is_iteration_based() -> None:
    cfg = compose_with(["task=segmentation", "schedule=poly_100k", "trainer.default_root_dir=."])
    assert cfg.trainer.max_steps == 100_000 and cfg.schedule.warmup_iters == 0
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.02)
    scheduler = build_lr_scheduler(optimizer, OmegaConf.to_container(cfg.schedule), total_steps=100_000,
                                   steps_per_epoch=5000)
    for step, expected in ((0, 0.02), (1, 0.02 * (1 - 1 / 1e5) ** 0.9), (50_000, 0.02 * 0.5 ** 0.9),
                           (100_000, 0.0)):
        assert 0.02 * scheduler.lr_lambdas[0](step) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert compose_with(["task=segmentation"]).trainer.max_steps == -1  # epoch-based schedules keep -1


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_auxiliary_loss_is_added_with_its_weight() -> None:
    """mmsegmentation's auxiliary FCN head: total = main + 0.4 * aux, aux resized to the main grid."""
    torch.manual_seed(0)
    model = build_upernet(4, upsampler="bilinear", sites={"ppm": True, "fpn": True, "fuse": True},
                          backbone={"depth": 18}, channels=8, aux_head=True, aux_channels=8, aux_dropout=0.0)
    task = SegmentationTask(model, {"name": "sgd", "lr": 0.02}, {}, aux_weight=0.4)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 4, (2, 64, 64), dtype=torch.uint8)
    torch.manual_seed(1)
    loss = task.training_step((images, labels), 0)
    torch.manual_seed(1)
    outputs = model.train()(images)
    aux = F.interpolate(outputs["aux"], size=(16, 16), mode="bilinear", align_corners=False)
    expected = segmentation_loss(outputs["out"], labels) + 0.4 * segmentation_loss(aux, labels)
    torch.testing.assert_close(loss, expected)

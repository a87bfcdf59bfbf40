"""Linear lr scaling and the schedule shapes against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from carafe_exp.errors import ConfigError
from carafe_exp.tasks.optim import build_lr_scheduler, build_optimizer, lr_factor, scaled_lr, scaled_warmup_iters


def test_linear_scaling_rule() -> None:
    assert scaled_lr(0.02, 16, 2) == pytest.approx(0.0025)
    assert scaled_lr(0.4, 1024, 256) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        scaled_lr(0.1, 0, 4)


def test_optimizer_uses_the_scaled_lr() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = build_optimizer(params, {"name": "sgd", "lr": 0.02, "base_batch_size": 16, "momentum": 0.9,
                                         "weight_decay": 1e-4}, total_batch_size=4)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.005) and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    adam = build_optimizer(params, {"name": "adam", "lr": 1e-4, "betas": [0.5, 0.9]}, total_batch_size=32)
    assert adam.param_groups[0]["betas"] == (0.5, 0.9)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(params, {"name": "lion", "lr": 1.0}, 1)


def test_step_policy_with_warmup_matches_mmdetection_1x() -> None:
    common = dict(total_steps=1200, steps_per_epoch=100, policy="step", milestones=(8, 11), warmup_iters=500,
                  warmup_factor=0.001)
    assert lr_factor(0, **common) == pytest.approx(0.001)
    assert lr_factor(250, **common) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(500, **common) == 1.0
    assert lr_factor(799, **common) == 1.0
    assert lr_factor(800, **common) == pytest.approx(0.1)
    assert lr_factor(1100, **common) == pytest.approx(0.01)


def test_poly_and_cosine() -> None:
    assert lr_factor(50, total_steps=100, steps_per_epoch=10, policy="poly", power=0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(50, total_steps=100, steps_per_epoch=10, policy="cosine") == pytest.approx(0.5)
    assert lr_factor(100, total_steps=100, steps_per_epoch=10, policy="cosine") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown lr policy"):
        lr_factor(0, total_steps=1, steps_per_epoch=1, policy="exp")


def test_scheduler_steps_the_optimizer() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, {"policy": "cosine"}, total_steps=10, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_warmup_scales_with_the_batch_like_the_lr() -> None:
    """mmdetection v1's 500 warm-up iterations at batch 16 are 8000 images: 4000 iterations at batch 2."""
    assert scaled_warmup_iters(500, 16, 2) == 4000
    assert scaled_warmup_iters(500, 16, 32) == 250
    schedule = {"policy": "constant", "warmup_iters": 500, "warmup_factor": 1 / 3, "warmup_scales_with_batch": True}

    def lrs(base: int, total: int, steps: list[int]) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_lr_scheduler(optimizer, schedule, total_steps=10_000, steps_per_epoch=100,
                                       base_batch_size=base, total_batch_size=total)
        return [scheduler.lr_lambdas[0](step) for step in steps]

    assert lrs(16, 2, [0, 2000, 4000]) == pytest.approx([1 / 3, 1 / 3 + (2 / 3) * 0.5, 1.0])
    assert lrs(16, 16, [0, 250, 500]) == pytest.approx([1 / 3, 2 / 3, 1.0])
    # Without the flag the warm-up stays in iterations.
    schedule["warmup_scales_with_batch"] = False
    assert lrs(16, 2, [250, 500]) == pytest.approx([2 / 3, 1.0])


def test_warmup_in_epochs_covers_those_epochs_at_any_batch() -> None:
    """Goyal et al. 2017 §5.1: the gradual warm-up spans the first 5 epochs, whatever the batch."""
    schedule = {"policy": "constant", "warmup_epochs": 5, "warmup_factor": 0.25, "warmup_scales_with_batch": True}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, schedule, total_steps=9000, steps_per_epoch=100,
                                   base_batch_size=1024, total_batch_size=256)
    assert [scheduler.lr_lambdas[0](step) for step in (0, 250, 500, 501)] == pytest.approx([0.25, 0.625, 1.0, 1.0])


def test_warmup_given_twice_is_a_config_error() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="schedule.warmup_epochs=5 and schedule.warmup_iters=500"):
        build_lr_scheduler(optimizer, {"policy": "step", "warmup_epochs": 5, "warmup_iters": 500}, total_steps=10,
                           steps_per_epoch=5)

"""test/fps follows mmdetection's benchmark protocol (tools/analysis_tools/benchmark.py): untimed
warm-up passes, then a fixed number of timed images; every pass still runs for the metrics."""

from __future__ import annotations

import logging

import pytest
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.tasks.base import FPS_PROTOCOL, ResamplingTask


def _task(**fps: int) -> ResamplingTask:
    return ResamplingTask(nn.Linear(2, 2), optimizer={"name": "sgd", "lr": 0.1}, schedule={}, fps=fps or None)


def test_defaults_are_mmdetections_benchmark() -> None:
    # benchmark.py: num_warmup = 5, max_iter = 2000 (one image per iteration)
    assert FPS_PROTOCOL == {"warmup_iters": 5, "max_images": 2000}
    task = _task()
    assert (task.fps_warmup_iters, task.fps_max_images) == (5, 2000)


def test_warmup_passes_are_not_timed_and_timing_stops_at_max_images() -> None:
    task = _task(warmup_iters=2, max_images=3)
    task.on_test_epoch_start()
    ran = []
    for index in range(7):
        assert task.timed_inference(lambda index=index: ran.append(index) or index, num_images=1) == index
    assert ran == list(range(7))              # every pass ran (its outputs feed the metrics)
    assert task._inference_images == 3       # passes 3, 4, 5 timed; 1-2 warm-up, 6-7 past max_images
    assert task._inference_seconds > 0
    task.on_test_epoch_start()                # a new test epoch starts counting afresh
    assert task._inference_images == 0 and task._inference_calls == 0


def test_no_timed_pass_records_no_fps(caplog: pytest.LogCaptureFixture) -> None:
    task = _task(warmup_iters=5)
    task.on_test_epoch_start()
    task.timed_inference(lambda: None, num_images=1)
    with caplog.at_level(logging.WARNING):
        task.log_fps()  # would raise outside a Trainer if it tried to log a value
    assert "not recorded" in caplog.text


@pytest.mark.parametrize("fps", [{"warmup_iters": -1}, {"max_images": 0}, {"warmup": 5}])
def test_bad_protocol_is_a_config_error(fps: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="task.module.fps"):
        _task(**fps)

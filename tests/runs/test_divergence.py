"""A diverged run stops at the step its loss became non-finite (issue 20, finding 2), and metrics.json stays strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import TINY_CLASSIFICATION, run_cli
from carafe_exp.runs.record import build_record


def strict_json(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_as_diverged_with_exit_3(cli_env: dict[str, str], tmp_path: Path) -> None:
    # The report's command: lr=1e8 makes the loss NaN within two epochs; it used to end "completed", exit 0.
    # A checkpoint every step shows that the one kept is the last finite state.
    result = run_cli([*TINY_CLASSIFICATION, "logger=none", "schedule.max_epochs=2", "task.module.optimizer.lr=1e8",
                      "callbacks.last_checkpoint.every_n_train_steps=1", f"hydra.run.dir={tmp_path}"], cli_env,
                     check=False)
    assert result.returncode == 3, result.stderr[-3000:]
    record = strict_json(tmp_path / "metrics.json")
    assert record["status"] == "diverged" and record["metrics"] == {}
    divergence = record["divergence"]
    term, value = divergence["term"], divergence["value"]
    assert (term == "train/loss" or term.startswith("weights: model.")) and value in ("nan", "inf", "-inf")
    assert record["error"] == f"diverged at step {divergence['global_step']} ({term} = {value})"
    errors = [line for line in result.stderr.splitlines() if line.startswith("carafe-exp: error:")]
    assert errors == [f"carafe-exp: error: the training loss diverged at step {divergence['global_step']} "
                      f"(epoch {divergence['epoch'] + 1}): {term} = {value}; last finite "
                      f"checkpoint: {tmp_path / 'checkpoints' / 'last.ckpt'}"], result.stderr[-2000:]
    # The checkpoint kept is from before the divergence: an earlier step, and finite weights.
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert divergence["checkpoint"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert kept["global_step"] == divergence["global_step"] - 1
    assert all(torch.isfinite(value).all() for value in kept["state_dict"].values() if value.is_floating_point())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_metric_is_written_as_null_and_named(tmp_path: Path, value: float) -> None:
    from carafe_exp.runs.record import write_record

    record = build_record(task="classification", overrides=[], metrics={"top1": 50.0, "loss": value}, config={},
                          wall_time_s=1.0, throughput={"train_images_per_s": value})
    strict = strict_json(write_record(tmp_path, record))
    assert strict["metrics"] == {"top1": 50.0, "loss": None}
    assert strict["non_finite"] == ["metrics.loss", "throughput.train_images_per_s"]

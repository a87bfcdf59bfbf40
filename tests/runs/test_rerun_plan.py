"""What a sweep job does with the record its directory holds (carafe_exp.runs.rerun), for every status and ``rerun`` value."""

from __future__ import annotations

from pathlib import Path

import pytest

from carafe_exp.errors import ConfigError
from carafe_exp.runs.record import build_record, write_record
from carafe_exp.runs.rerun import check_rerun, plan_job

CONFIG = {"seed": 1, "model": {"depth": 18}, "rerun": None, "name": "classification-resnet18"}


def _job(tmp_path: Path, status: str, config: dict | None = None, checkpoint: bool = True) -> Path:
    write_record(tmp_path, build_record(task="classification", overrides=[], metrics={}, config=config or CONFIG,
                                        wall_time_s=1.0, throughput={}, status=status))
    if checkpoint:
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    return tmp_path


@pytest.mark.parametrize(("status", "rerun", "action"), [
    ("completed", None, "skipped"), ("completed", "failed", "skipped"), ("completed", "all", "run"),
    ("interrupted", None, "resumed"), ("interrupted", "failed", "resumed"), ("interrupted", "all", "run"),
    ("diverged", None, "kept"), ("diverged", "failed", "run"), ("failed", None, "kept"), ("failed", "failed", "run"),
])
def test_action_for_each_status_and_rerun_value(tmp_path: Path, status: str, rerun: str | None,
                                                action: str) -> None:
    plan = plan_job(_job(tmp_path, status), {**CONFIG, "rerun": rerun}, rerun)
    assert plan.action == action, plan
    assert (plan.checkpoint == tmp_path / "checkpoints" / "last.ckpt") == (action == "resumed")


def test_no_record_runs_and_an_interrupted_job_without_checkpoint_starts_over(tmp_path: Path) -> None:
    assert plan_job(tmp_path, CONFIG, None).action == "run"
    plan = plan_job(_job(tmp_path, "interrupted", checkpoint=False), CONFIG, None)
    assert plan.action == "run" and "before its first checkpoint" in plan.reason


def test_a_changed_config_is_run_again_and_named(tmp_path: Path) -> None:
    plan = plan_job(_job(tmp_path, "completed"), {**CONFIG, "model": {"depth": 34}}, None)
    assert plan.action == "run" and "model.depth" in plan.reason


def test_a_failure_recorded_before_the_run_had_a_name_is_the_same_job(tmp_path: Path) -> None:
    plan = plan_job(_job(tmp_path, "failed", config={**CONFIG, "name": None}), CONFIG, None)
    assert plan.action == "kept"


def test_rerun_takes_only_its_choices() -> None:
    assert [check_rerun(v) for v in (None, "failed", "all")] == [None, "failed", "all"]
    with pytest.raises(ConfigError, match="rerun=everything is not one of null, failed, all"):
        check_rerun("everything")

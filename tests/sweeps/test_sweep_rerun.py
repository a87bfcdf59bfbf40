"""Running a sweep's command again resumes it (issue 20, finding 3): completed jobs skipped, an interrupted one resumed, the rest run."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import CLI, REPO, run_cli
from runs.test_interruption import RUN, STEPS_PER_EPOCH, assert_same_weights, signal_when, weights_of

ONE_EPOCH = [*RUN, "schedule.max_epochs=1"]


@pytest.mark.slow
def test_the_same_sweep_command_skips_completed_resumes_interrupted_and_runs_the_rest(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = CLI + ["-m", *ONE_EPOCH, "seed=1,2,3", f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen(command, env=cli_env, cwd=REPO, text=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        # Job 2 (seed=2) is stopped inside its epoch, once its first mid-epoch checkpoint exists.
        second = sweep / "1_seed=2"
        signal_when(process, second / "checkpoints" / "last.ckpt", signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    first = sweep / "0_seed=1"
    assert json.loads((first / "metrics.json").read_text())["status"] == "completed"
    stop = json.loads((second / "metrics.json").read_text())
    assert stop["status"] == "interrupted" and 0 < stop["interruption"]["global_step"] < STEPS_PER_EPOCH, stop
    assert not (sweep / "2_seed=3").exists()
    first_record = (first / "metrics.json").read_bytes()
    first_checkpoint = (first / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    result = run_cli(command[len(CLI):], cli_env)
    assert "3 jobs: 1 run, 1 skipped (completed before), 1 resumed, 0 failed" in result.stderr, result.stderr[-3000:]
    # Job 1 was not trained again: its record and checkpoint are the ones of the first command.
    assert (first / "metrics.json").read_bytes() == first_record
    assert (first / "checkpoints" / "last.ckpt").stat().st_mtime_ns == first_checkpoint
    actions = {job: json.loads((sweep / job / ".hydra" / "job_action.json").read_text())["action"]
               for job in ("0_seed=1", "1_seed=2", "2_seed=3")}
    assert actions == {"0_seed=1": "skipped", "1_seed=2": "resumed", "2_seed=3": "run"}, actions
    for job in ("1_seed=2", "2_seed=3"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    assert json.loads((second / "metrics.attempt1.json").read_text())["status"] == "interrupted"

    # Job 2 resumed ends with the weights of job 2 run without interruption.
    reference = tmp_path / "reference"
    run_cli([*ONE_EPOCH, "seed=2", f"hydra.run.dir={reference}"], cli_env)
    assert_same_weights(weights_of(reference), weights_of(second))

"""Running a sweep's command again resumes it (issue 20, finding 3): completed jobs skipped, an interrupted one resumed, the rest run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import CLI, REPO, run_cli
from runs.test_interruption import RUN, STEPS_PER_EPOCH, assert_same_weights, signal_when, weights_of

ONE_EPOCH = [*RUN, "schedule.max_epochs=1"]


def job_dir(sweep: Path, prefix: str, process: subprocess.Popen[str] | None = None, timeout: float = 300) -> Path:
    """The sweep's job directory whose name starts with ``prefix`` (waiting for it while ``process`` runs)."""
    deadline = time.monotonic() + timeout
    while not (found := sorted(sweep.glob(f"{prefix},*"))):
        if process is None or process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no job directory {prefix},* in {sweep}")
        time.sleep(0.01)
    return found[0]


@pytest.mark.slow
def test_the_same_sweep_command_skips_completed_resumes_interrupted_and_runs_the_rest(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = CLI + ["-m", *ONE_EPOCH, "seed=1,2,3", f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen(command, env=cli_env, cwd=REPO, text=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        # Job 2 (seed=2) is stopped inside its epoch, once its first mid-epoch checkpoint exists.
        second = job_dir(sweep, "1_seed=2", process)
        signal_when(process, second / "checkpoints" / "last.ckpt", signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    first = job_dir(sweep, "0_seed=1")
    assert json.loads((first / "metrics.json").read_text())["status"] == "completed"
    stop = json.loads((second / "metrics.json").read_text())
    assert stop["status"] == "interrupted" and 0 < stop["interruption"]["global_step"] < STEPS_PER_EPOCH, stop
    assert not list(sweep.glob("2_seed=3*"))
    first_record = (first / "metrics.json").read_bytes()
    first_checkpoint = (first / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    result = run_cli(command[len(CLI):], cli_env)
    assert "3 jobs: 1 run, 1 skipped (completed before), 1 resumed, 0 failed" in result.stderr, result.stderr[-3000:]
    # Job 1 was not trained again: its record and checkpoint are the ones of the first command.
    assert (first / "metrics.json").read_bytes() == first_record
    assert (first / "checkpoints" / "last.ckpt").stat().st_mtime_ns == first_checkpoint
    jobs = [job_dir(sweep, prefix) for prefix in ("0_seed=1", "1_seed=2", "2_seed=3")]
    actions = [json.loads((job / ".hydra" / "job_action.json").read_text())["action"] for job in jobs]
    assert actions == ["skipped", "resumed", "run"], actions
    for job in jobs[1:]:
        assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
    assert json.loads((second / "metrics.attempt1.json").read_text())["status"] == "interrupted"

    # Job 2 resumed ends with the weights of job 2 run without interruption.
    reference = tmp_path / "reference"
    run_cli([*ONE_EPOCH, "seed=2", f"hydra.run.dir={reference}"], cli_env)
    assert_same_weights(weights_of(reference), weights_of(second))

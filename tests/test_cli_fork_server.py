"""The test helper that forks CLI runs from a pre-imported server gives what a fresh process gives."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import helpers
from helpers import TINY_CLASSIFICATION, run_cli


def test_a_forked_run_reports_exactly_what_a_fresh_process_reports(cli_env: dict[str, str], tmp_path: Path) -> None:
    # A configuration error: exit status, the one stderr line and the failure record.
    args = [*TINY_CLASSIFICATION, "schedule.policy=linear"]
    forked = run_cli([*args, f"hydra.run.dir={tmp_path / 'forked'}"], cli_env, check=False)
    fresh = run_cli([*args, f"hydra.run.dir={tmp_path / 'fresh'}"], cli_env, check=False, fresh_process=True)
    assert helpers._fork_server is not None and helpers._fork_server.serves(cli_env)
    # The extension build sets CUDA_HOME in the test process; runs read it later, so they are still served.
    assert helpers._fork_server.serves(dict(cli_env, CUDA_HOME="/opt/elsewhere"))
    assert forked.returncode == fresh.returncode == 2
    assert forked.stderr == fresh.stderr and forked.stdout == fresh.stdout
    records = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("forked", "fresh")]
    assert records[0]["error"] == records[1]["error"] and records[0]["status"] == "failed"


def test_a_run_past_its_timeout_is_killed_and_the_server_goes_on(cli_env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli([*TINY_CLASSIFICATION, "schedule.max_epochs=1000", "logger=none", f"hydra.run.dir={tmp_path / 'long'}"],
                cli_env, timeout=5)
    result = run_cli([*TINY_CLASSIFICATION, "schedule.policy=linear", f"hydra.run.dir={tmp_path / 'next'}"], cli_env,
                     check=False)
    assert result.returncode == 2 and "unknown lr policy" in result.stderr


def test_an_environment_read_at_start_up_gets_a_fresh_process(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(cli_env, OMP_NUM_THREADS="2")
    assert helpers._fork_server is None or not helpers._fork_server.serves(env)
    result = run_cli(["--cfg", "job", "--package", "seed"], env)
    assert result.returncode == 0 and result.stdout.strip() == "0"

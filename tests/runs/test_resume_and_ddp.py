"""Runs survive being killed, and DDP on 2 CPU processes trains and evaluates like 1 process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import CLI, REPO, TINY_CLASSIFICATION, run_cli

DETERMINISTIC = [*TINY_CLASSIFICATION, "logger=none", "trainer.deterministic=true", "schedule.max_epochs=3"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _wait_for_first_checkpoint(process: subprocess.Popen[bytes], checkpoint: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checkpoint.is_file():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (code {process.returncode}) before writing {checkpoint}")
        time.sleep(0.02)
    raise AssertionError(f"no {checkpoint} after {timeout} s")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(cli_env: dict[str, str], tmp_path: Path) -> None:
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    run_cli([*DETERMINISTIC, f"hydra.run.dir={uninterrupted}"], cli_env)

    process = subprocess.Popen(CLI + [*DETERMINISTIC, f"hydra.run.dir={killed}"], env=cli_env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_first_checkpoint(process, killed / "checkpoints" / "last.ckpt", timeout=300)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "metrics.json").exists()
    first_epoch = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert first_epoch < 2

    run_cli([*DETERMINISTIC, f"hydra.run.dir={killed}", "ckpt_path=last"], cli_env)
    expected, resumed = _weights(uninterrupted), _weights(killed)
    assert expected.keys() == resumed.keys()
    different = [k for k in expected if not torch.equal(expected[k], resumed[k])]
    assert not different, f"resumed weights differ in {different[:5]}"
    assert json.loads((killed / "metrics.json").read_text())["metrics"] == \
        json.loads((uninterrupted / "metrics.json").read_text())["metrics"] | {
            "fps": json.loads((killed / "metrics.json").read_text())["metrics"]["fps"]}


def test_ckpt_path_last_without_checkpoint_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli([*TINY_CLASSIFICATION, "ckpt_path=last", f"hydra.run.dir={tmp_path}"], cli_env, check=False)
    assert result.returncode == 2
    assert "ckpt_path=last: no checkpoint at" in result.stderr


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_evaluate_like_one(cli_env: dict[str, str], tmp_path: Path) -> None:
    trained = tmp_path / "ddp_train"
    run_cli([*TINY_CLASSIFICATION, *DDP, "logger=csv", "schedule.max_epochs=2", f"hydra.run.dir={trained}"],
            cli_env, timeout=900)
    record = json.loads((trained / "metrics.json").read_text())
    assert record["config"]["trainer"]["strategy"] == "ddp" and record["config"]["trainer"]["devices"] == 2
    checkpoint = trained / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1

    one, two = tmp_path / "eval1", tmp_path / "eval2"
    # The checkpoint's run directory gives its config (trainer=ddp included); one process is asked for.
    evaluate = [*TINY_CLASSIFICATION, "logger=none", "train=false", f"ckpt_path={checkpoint}"]
    run_cli([*evaluate, "trainer=cpu", f"hydra.run.dir={one}"], cli_env)
    run_cli([*evaluate, *DDP, f"hydra.run.dir={two}"], cli_env, timeout=900)
    metrics_one = json.loads((one / "metrics.json").read_text())["metrics"]
    metrics_two = json.loads((two / "metrics.json").read_text())["metrics"]
    for name in ("top1", "top5"):
        assert metrics_two[name] == pytest.approx(metrics_one[name], abs=1e-4), (metrics_one, metrics_two)
    assert metrics_two["loss"] == pytest.approx(metrics_one["loss"], rel=1e-4)

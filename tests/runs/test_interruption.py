"""A signal stops a run at a step, saves it, says so and exits 128 + signal; the resumed run ends bit for bit as an uninterrupted one.

The report's reproduction (issue 20, finding 1): ``kill -TERM`` in the middle of an epoch used
to exit 0 with no metrics.json and only the previous epoch's checkpoint.
"""

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

# 64 training images in batches of 8: 8 steps per epoch; last.ckpt also every 2 steps.
RUN = [*TINY_CLASSIFICATION, "data.sample.train_per_class=16", "logger=none", "trainer.deterministic=true",
       "schedule.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=2"]
STEPS_PER_EPOCH = 8


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, f"weights differ in {different[:5]}"


def signal_when(process: subprocess.Popen[str], ready: Path, signum: int, timeout: float = 300) -> None:
    """Send ``signum`` to ``process`` as soon as ``ready`` exists (a first mid-epoch checkpoint)."""
    deadline = time.monotonic() + timeout
    while not ready.is_file():
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before {ready} existed:\n"
                                 f"{process.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {ready} after {timeout} s")
        time.sleep(0.01)
    os.kill(process.pid, signum)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_mid_epoch_saves_the_step_and_the_resumed_run_ends_as_an_uninterrupted_one(
        cli_env: dict[str, str], tmp_path: Path, signum: int) -> None:
    uninterrupted, stopped = tmp_path / "uninterrupted", tmp_path / "stopped"
    run_cli([*RUN, f"hydra.run.dir={uninterrupted}"], cli_env)

    process = subprocess.Popen(CLI + [*RUN, f"hydra.run.dir={stopped}"], env=cli_env, cwd=REPO, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        signal_when(process, stopped / "checkpoints" / "last.ckpt", signum)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr[-3000:]
    record = json.loads((stopped / "metrics.json").read_text())
    assert record["status"] == "interrupted", record
    stop = record["interruption"]
    assert stop["signal"] == signal.Signals(signum).name
    checkpoint = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # The checkpoint is the step the signal stopped, inside the first epoch (not its end).
    assert checkpoint["global_step"] == stop["global_step"] and stop["checkpoint"] == str(
        stopped / "checkpoints" / "last.ckpt")
    assert 2 <= stop["global_step"] < STEPS_PER_EPOCH, stop
    assert f"interrupted by {signal.Signals(signum).name} at epoch 0, step {stop['global_step']}" in stderr

    run_cli([*RUN, f"hydra.run.dir={stopped}", "ckpt_path=last"], cli_env)
    assert_same_weights(weights_of(uninterrupted), weights_of(stopped))
    resumed = json.loads((stopped / "metrics.json").read_text())
    expected = json.loads((uninterrupted / "metrics.json").read_text())["metrics"]
    assert resumed["status"] == "completed"
    assert {k: v for k, v in resumed["metrics"].items() if k != "fps"} == \
        {k: v for k, v in expected.items() if k != "fps"}
    assert json.loads((stopped / "metrics.attempt1.json").read_text())["status"] == "interrupted"

"""One run trained as a user runs it (default callbacks, output piped), then evaluated, resumed and read.

Each test reproduces an item of the run-reliability report: ``last.ckpt`` lagged behind the last
epoch, resume repeated work, evaluating a run directory built the default model, the record and
the piped output were not what a user can trust.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import REPO, TINY_CLASSIFICATION, run_cli

EPOCHS = 3
STEPS_PER_EPOCH = 4  # 4 classes x 8 training images, batch 8
RUN = [*TINY_CLASSIFICATION, "trainer.deterministic=true", f"schedule.max_epochs={EPOCHS}"]


@pytest.fixture(scope="module")
def trained(module_cli_env: dict[str, str], module_tmp_path: Path
            ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A finished 3-epoch run with the default callbacks and logger, its output captured (piped)."""
    run_dir = module_tmp_path / "run"
    result = run_cli([*RUN, f"hydra.run.dir={run_dir}"], module_cli_env)
    return run_dir, result


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_last_checkpoint_is_the_end_of_training(trained: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Lightning's save_last wrote last.ckpt only when the monitored best changed (it held epoch 1 of 4)."""
    run_dir, _ = trained
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert files == ["last.ckpt"], files  # one checkpoint per run; best.ckpt only when asked
    checkpoint = _checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["epoch"] == EPOCHS - 1
    assert checkpoint["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert checkpoint["carafe_exp"]["model"] == "resnet" and checkpoint["carafe_exp"]["depth"] == 18


def test_evaluating_the_run_directory_reproduces_its_metrics(
        trained: tuple[Path, subprocess.CompletedProcess[str]], module_cli_env: dict[str, str], tmp_path: Path) -> None:
    """``train=false ckpt_path=<run dir>`` as the README writes it: the run's config, its final weights."""
    run_dir, _ = trained
    evaluation = tmp_path / "evaluation"
    run_cli(["train=false", f"ckpt_path={run_dir}", f"hydra.run.dir={evaluation}"], module_cli_env)
    ours, theirs = _record(evaluation), _record(run_dir)
    assert ours["evaluated_checkpoint"]["path"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert ours["config"]["model"]["backbone"]["depth"] == 18  # not the default detection model
    for name in ("top1", "top5", "loss"):
        assert ours["metrics"][name] == pytest.approx(theirs["metrics"][name], abs=1e-6), (ours, theirs)


def test_resuming_a_finished_run_changes_nothing(trained: tuple[Path, subprocess.CompletedProcess[str]],
                                                 module_cli_env: dict[str, str]) -> None:
    """A finished run was re-trained for two epochs and its metrics.json overwritten."""
    run_dir, _ = trained
    record_before = (run_dir / "metrics.json").read_bytes()
    checkpoint_before = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    result = run_cli([f"hydra.run.dir={run_dir}", "ckpt_path=last"], module_cli_env)
    assert "nothing to do" in result.stdout
    assert (run_dir / "metrics.json").read_bytes() == record_before
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == checkpoint_before
    assert not list(run_dir.glob("metrics.attempt*.json"))


def test_run_killed_after_training_is_evaluated_not_retrained(
        trained: tuple[Path, subprocess.CompletedProcess[str]], module_cli_env: dict[str, str], tmp_path: Path) -> None:
    """Killed between the last checkpoint and metrics.json: ``ckpt_path=last`` evaluates the final weights only."""
    finished, _ = trained
    killed = tmp_path / "killed"
    shutil.copytree(finished, killed)
    (killed / "metrics.json").unlink()
    checkpoint_before = (killed / "checkpoints" / "last.ckpt").read_bytes()
    result = run_cli([f"hydra.run.dir={killed}", "ckpt_path=last"], module_cli_env)
    assert "evaluating it only" in result.stdout
    assert (killed / "checkpoints" / "last.ckpt").read_bytes() == checkpoint_before
    record = _record(killed)
    assert record["status"] == "completed" and record["evaluated_checkpoint"]["epoch"] == EPOCHS - 1
    ours, theirs = record["metrics"], _record(finished)["metrics"]
    for name in ("top1", "top5", "loss"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), (ours, theirs)


def test_interrupted_run_resumes_to_the_uninterrupted_result(
        trained: tuple[Path, subprocess.CompletedProcess[str]], module_cli_env: dict[str, str], tmp_path: Path) -> None:
    """Stopped after 2 of 3 epochs, then resumed with only ``ckpt_path=last``: same weights and metrics.

    The resume gives none of the run's overrides: they come from the run directory. The first
    attempt's metrics.json is kept beside the new one.
    """
    uninterrupted, _ = trained
    stopped = tmp_path / "stopped"
    run_cli([*RUN, "trainer.max_epochs=2", f"hydra.run.dir={stopped}"], module_cli_env)
    assert _checkpoint(stopped / "checkpoints" / "last.ckpt")["epoch"] == 1
    run_cli([f"hydra.run.dir={stopped}", "ckpt_path=last", f"trainer.max_epochs={EPOCHS}"], module_cli_env)

    expected = _checkpoint(uninterrupted / "checkpoints" / "last.ckpt")
    resumed = _checkpoint(stopped / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == expected["global_step"] == EPOCHS * STEPS_PER_EPOCH
    different = [k for k in expected["state_dict"] if not torch.equal(expected["state_dict"][k],
                                                                       resumed["state_dict"][k])]
    assert not different, f"resumed weights differ in {different[:5]}"
    ours, theirs = _record(stopped)["metrics"], _record(uninterrupted)["metrics"]
    assert {k: v for k, v in ours.items() if k != "fps"} == {k: v for k, v in theirs.items() if k != "fps"}
    first_attempt = json.loads((stopped / "metrics.attempt1.json").read_text())
    assert first_attempt["status"] == "completed" and first_attempt["config"]["trainer"]["max_epochs"] == 2
    assert _record(stopped)["resumed_from"]["epoch"] == 1


def test_checkpoint_of_another_model_is_one_line(trained: tuple[Path, subprocess.CompletedProcess[str]],
                                                 module_cli_env: dict[str, str], tmp_path: Path) -> None:
    run_dir, _ = trained
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    result = run_cli(["train=false", f"ckpt_path={checkpoint}", "model.backbone.depth=34",
                      f"hydra.run.dir={tmp_path / 'evaluation'}"], module_cli_env, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("carafe-exp: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "holds classification resnet (depth 18)" in errors[0] and "built classification resnet (depth 34)" \
        in errors[0], errors[0]


def test_record_is_complete_and_readable(trained: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, _ = trained
    path = run_dir / "metrics.json"
    # Was 0600, unlike every other output (0644 under the usual umask).
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((run_dir / ".hydra" / "config.yaml").stat().st_mode)
    record = _record(run_dir)
    assert record["status"] == "completed"
    assert record["device"]["accelerator"] == "cpu" and record["device"]["count"] == 1 and record["device"]["name"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and os.path.isdir(REPO / ".git"):
        assert record["versions"]["git_commit"] == head.stdout.strip()
        assert isinstance(record["versions"]["git_dirty"], bool)
    # The test speed is `fps` alone; the training speed is the throughput.
    assert set(record["throughput"]) == {"train_images_per_s"} and record["metrics"]["fps"] > 0
    # A classifier has no upsampling site: its name does not carry the default upsampler.
    assert record["name"] == "classification-resnet-conv"


def test_piped_output_has_one_line_per_epoch_and_no_noise(
        trained: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Piped (SLURM, ``| tee``), the rich bar showed nothing until the end; Lightning added noise."""
    _, result = trained
    output = result.stdout + result.stderr
    epoch_lines = [line for line in result.stdout.splitlines() if "] epoch " in line]
    assert len(epoch_lines) == EPOCHS, result.stdout
    for number, line in enumerate(epoch_lines, start=1):
        assert f"epoch {number}/{EPOCHS} step {number * STEPS_PER_EPOCH} " in line, line
        assert "train/loss " in line and "val/top1 " in line and line.endswith("img/s"), line
    assert "Total FLOPs" not in output and "Tip:" not in output and "treespec" not in output
    assert "Test metric" not in output  # Lightning's test table repeated ours
    assert result.stdout.count("final metrics") == 1

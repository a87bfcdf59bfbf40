"""Bad input is one line on stderr naming what is wrong and what is expected, with exit status 2.

Each CLI case was a traceback (or exit 1 through Hydra's wrapper) before; the resampler checks
are also run in-process for every argument, since they share one path to the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import TINY_CLASSIFICATION, run_cli


def _one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("carafe-exp: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data=coco"], ["data.root is required", "data=coco", "data.root=<value>"]),
        (["task=classification", "data=imagenet"], ["data.root is required", "data=imagenet"]),
        (["task=classification", "data=coco_sample"],
         ["task=classification cannot use data=coco_sample", "needs imagenet data"]),
        ([*TINY_CLASSIFICATION, "downsampler=carafe", "downsampler.k_down=4"],
         ["downsampler.k_down=4", "odd int >= 1"]),
        (["task=inpainting", "trainer.gradient_clip_val=1.0"],
         ["trainer.gradient_clip_val cannot be used with task=inpainting", "gradient_clip_val=null"]),
        (["schedule.policy=linear"], ["schedule.policy=linear: unknown lr policy", "step, poly, cosine, constant"]),
        (["task.module.optimizer.name=rmsprop"],
         ["task.module.optimizer.name=rmsprop: unknown optimizer", "sgd, adam, adamw"]),
        # Each of these was a traceback from the lr scaling, the DataLoader or Lightning's Trainer.
        ([*TINY_CLASSIFICATION, "data.batch_size=0"], ["data.batch_size=0: expected a whole number >= 1"]),
        ([*TINY_CLASSIFICATION, "data.num_workers=-1"], ["data.num_workers=-1: expected a whole number >= 0"]),
        ([*TINY_CLASSIFICATION, "trainer.accumulate_grad_batches=0"],
         ["trainer.accumulate_grad_batches=0: expected a whole number >= 1"]),
        ([*TINY_CLASSIFICATION, "trainer.devices=0"], ["trainer settings", "Trainer(devices=0)"]),
        ([*TINY_CLASSIFICATION, "trainer.precision=bogus"], ["trainer settings", "Precision 'bogus' is invalid"]),
        ([*TINY_CLASSIFICATION, "schedule.max_epochs=-5"], ["trainer settings", "max_epochs", "-5"]),
        # Lightning accepts -1 as "train forever"; the lr schedule's total length was an OverflowError.
        ([*TINY_CLASSIFICATION, "schedule.max_epochs=-1"], ["give the run no end", "max_epochs=-1"]),
        (["task=classification", "schedule=90e", "schedule.warmup_iters=100"],
         ["schedule.warmup_epochs=5 and schedule.warmup_iters=100 both set the warm-up"]),
    ],
    ids=["coco-without-root", "imagenet-without-root", "task-data-mismatch", "k_down", "clip-with-manual-optim",
         "lr-policy", "optimizer", "batch-size-0", "negative-workers", "accumulate-0", "devices-0",
         "precision", "negative-epochs", "endless-epochs", "warmup-twice"],
)
def test_config_errors_are_one_line(args: list[str], expected: list[str], cli_env: dict[str, str],
                                    tmp_path: Path) -> None:
    line = _one_error_line(run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cli_env, check=False))
    for text in expected:
        assert text in line, line
    # The failed run still leaves its record.
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == line.removeprefix("carafe-exp: error: ")


def test_upsampler_argument_names_the_config_key(cli_env: dict[str, str], tmp_path: Path) -> None:
    """``upsampler.k_up=4`` went through Hydra's InstantiationException: exit 1 and a traceback."""
    line = _one_error_line(run_cli(["upsampler=carafe", "upsampler.k_up=4", f"hydra.run.dir={tmp_path}"],
                                   cli_env, check=False))
    assert "upsampler.k_up=4 is not valid for upsampler=carafe" in line and "odd" in line, line


def test_ckpt_path_that_is_not_a_checkpoint(cli_env: dict[str, str], tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a checkpoint\n")
    line = _one_error_line(run_cli([*TINY_CLASSIFICATION, "train=false", f"ckpt_path={text_file}",
                                    f"hydra.run.dir={tmp_path / 'run'}"], cli_env, check=False))
    assert f"ckpt_path={text_file} is not a checkpoint file" in line, line


def test_annotation_file_without_images(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A valid COCO file listing zero images gave a 21-frame traceback."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    empty = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(empty))
    line = _one_error_line(run_cli(["data=coco", f"data.root={root}", "data.num_workers=0",
                                    f"hydra.run.dir={tmp_path / 'run'}"], cli_env, check=False))
    assert "instances_train2017.json lists no image" in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_a_gpu(cli_env: dict[str, str], tmp_path: Path) -> None:
    line = _one_error_line(run_cli(["trainer=gpu", f"hydra.run.dir={tmp_path}"], cli_env, check=False))
    assert "needs a CUDA GPU" in line and "trainer=cpu" in line, line


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        ("upsampler", {"name": "carafe", "k_up": 4}, "upsampler.k_up=4 "),
        ("upsampler", {"name": "carafe", "c_m": -1}, "upsampler.c_m=-1 "),
        ("upsampler", {"name": "carafe", "groups": 3}, "upsampler.groups=3 "),
        ("upsampler", {"name": "carafe", "k_encoder": 2}, "upsampler.k_encoder=2 "),
        ("upsampler", {"name": "carafe", "normalizer": "tanh"}, "upsampler.normalizer='tanh' "),
        ("downsampler", {"name": "carafe", "k_down": 4}, "downsampler.k_down=4 "),
        ("downsampler", {"name": "carafe", "c_m": 0}, "downsampler.c_m=0 "),
    ],
)
def test_resampler_argument_checks_name_the_config_key(kind: str, spec: dict, expected: str) -> None:
    from carafe_exp.errors import ConfigError
    from carafe_exp.resample import build_downsampler, build_upsampler

    build = build_upsampler if kind == "upsampler" else build_downsampler
    with pytest.raises(ConfigError) as caught:
        build(spec, 256, 2)
    message = str(caught.value)
    assert message.startswith(expected) and f"is not valid for {kind}=carafe" in message, message
    assert "\n" not in message


def test_local_ddp_sweep_is_refused_only_with_several_processes(cli_env: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``devices: auto`` on a machine with one device is one process: the README's DDP sweep was refused."""
    from carafe_exp.errors import ConfigError
    from carafe_exp.sweeps.plan import check_sweep

    monkeypatch.setenv("CARAFE_EXP_CACHE", cli_env["CARAFE_EXP_CACHE"])
    if not torch.cuda.is_available() or torch.cuda.device_count() == 1:
        assert len(check_sweep(["trainer=ddp", "seed=1,2"])) == 2
    with pytest.raises(ConfigError, match="2 processes .* cannot run in a local sweep"):
        check_sweep(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "seed=1,2"])

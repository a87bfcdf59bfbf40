"""The run loop through the real command line: fast_dev_run, metrics.json, sweeps, bad input."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from helpers import TINY_CLASSIFICATION, run_cli


def test_fast_dev_run_writes_complete_metrics_json(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli([*TINY_CLASSIFICATION, "trainer.fast_dev_run=true", f"hydra.run.dir={run_dir}"], cli_env)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert {"task", "overrides", "metrics", "config", "versions", "wall_time_s", "throughput", "status",
            "device"} <= set(record)
    assert record["task"] == "classification" and record["status"] == "completed" and "error" not in record
    assert "model.backbone.depth=18" in record["overrides"]
    assert 0.0 <= record["metrics"]["top1"] <= 100.0
    assert record["metrics"]["top1"] <= record["metrics"]["top5"] <= 100.0
    assert record["metrics"]["fps"] > 0
    assert record["config"]["model"]["backbone"]["depth"] == 18
    assert record["versions"]["torch"] and record["versions"]["lightning"]
    assert record["wall_time_s"] > 0
    assert record["throughput"]["train_images_per_s"] > 0
    assert "top1" in result.stdout  # the final table is printed
    assert not list(run_dir.glob(".metrics.json.*"))  # no leftover temporary file
    assert not list(run_dir.rglob("*.ckpt"))  # fast_dev_run writes no checkpoint


def test_accuracy_is_learned_on_the_sample(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A few epochs on the 4-class sample beat chance by far: the pipeline really trains and evaluates."""
    run_dir = tmp_path / "run"
    run_cli([*TINY_CLASSIFICATION, "schedule.max_epochs=4", "task.module.optimizer.lr=0.8",
             "data.sample.train_per_class=32", "data.image_size=48", "data.resize_size=48", "data.sample.size=48",
             "logger=none", f"hydra.run.dir={run_dir}"], cli_env)
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["top1"] >= 50.0, metrics  # chance is 25%


def test_two_job_multirun_writes_two_records(cli_env: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_cli(["-m", *TINY_CLASSIFICATION, "trainer.fast_dev_run=true", "logger=none", "seed=1,2",
             f"hydra.sweep.dir={sweep}"], cli_env)
    records = sorted(sweep.glob("*/metrics.json"))
    assert len(records) == 2 and records[0].parent != records[1].parent
    seeds = sorted(json.loads(p.read_text())["config"]["seed"] for p in records)
    assert seeds == [1, 2]
    names = sorted(p.parent.name for p in records)
    # The swept key comes first although a dozen fixed overrides sort before it (issue: every
    # directory of a 10-upsampler sweep read "N_model.sites...,~<hash>").
    assert names[0].startswith("0_seed=1,") and names[1].startswith("1_seed=2,"), names
    assert all(len(name) <= 125 and "/" not in name for name in names)  # long override lists are cut


def test_sweep_dirnames_are_short_unique_and_flat() -> None:
    from carafe_exp.sweeps.dirname import short_dirname

    assert short_dirname("seed=1") == "seed=1"
    assert short_dirname("data.root=/data/coco,seed=1") == "data.root=_data_coco,seed=1"
    long_a, long_b = "x" * 300 + ",seed=1", "x" * 300 + ",seed=2"
    assert len(short_dirname(long_a)) == 120 and short_dirname(long_a) != short_dirname(long_b)


def test_job_dirname_puts_swept_keys_first_and_drops_fixed_ones_that_do_not_fit() -> None:
    from carafe_exp.sweeps.dirname import job_dirname

    fixed = ["model.sites.mask_head=True", "data.root=/data/coco", "trainer=ddp", "schedule=1x"]
    name = job_dirname([*fixed, "upsampler=carafe", "upsampler.k_up=5"], ["upsampler", "upsampler.k_up"])
    assert name.startswith("upsampler=carafe,upsampler.k_up=5,") and "data.root=_data_coco" in name
    many = [f"key{i:02d}.setting=value{i:02d}" for i in range(20)]
    name = job_dirname([*many, "+row=carafe/table6/pfu"], ["row"], limit=60)
    assert name.startswith("+row=carafe_table6_pfu,") and len(name) <= 60
    assert job_dirname(["a=1", "ckpt_path=x"], ["a"], exclude_keys=["ckpt_path"]) == "a=1"
    # A user's module:Class upsampler, as Hydra escapes it in the job's overrides.
    assert job_dirname(["upsampler=my_pkg.mod\\:MyUp"], ["upsampler"]) == "upsampler=my_pkg.mod:MyUp"


def test_unknown_option_lists_available(cli_env: dict[str, str]) -> None:
    result = run_cli(["upsampler=does_not_exist", "--cfg", "job"], cli_env, check=False)
    assert result.returncode != 0
    assert "Could not find 'upsampler/does_not_exist'" in result.stderr
    assert "nearest" in result.stderr  # Hydra lists the available options


def test_missing_data_root_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run_cli(["task=classification", "data=imagenet", f"data.root={missing}",
                      f"hydra.run.dir={tmp_path / 'run'}"], cli_env,
                     check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and str(missing) in lines[0] and "train/<class>" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_malformed_data_root_names_the_dir(cli_env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    (root / "train" / "cat").mkdir(parents=True)
    result = run_cli(["task=classification", "data=imagenet", f"data.root={root}",
                      f"hydra.run.dir={tmp_path / 'run'}"], cli_env,
                     check=False)
    assert result.returncode == 2
    assert f"data.root={root} has no val/ directory" in result.stderr


def test_corrupt_image_names_the_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 90, 30, 200)).save(folder / f"{i}.JPEG")
    corrupt = root / "train" / "a" / "1.JPEG"
    corrupt.write_bytes(b"this is not a jpeg")
    result = run_cli(["task=classification", "data=imagenet", f"data.root={root}", "data.num_workers=0",
                      "data.batch_size=8", "data.image_size=32", "data.resize_size=36", "model.backbone.depth=18",
                      "trainer.fast_dev_run=true", "callbacks=none", f"hydra.run.dir={tmp_path / 'run'}"],
                     cli_env, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"cannot read image {corrupt}" in result.stderr


def test_carafe_downsampler_in_the_classification_backbone(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_cli([*TINY_CLASSIFICATION, "downsampler=carafe", "model.sites.backbone=true", "trainer.fast_dev_run=true",
             "logger=none", f"hydra.run.dir={run_dir}"], cli_env)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["config"]["downsampler"]["name"] == "carafe"
    assert 0.0 <= record["metrics"]["top1"] <= 100.0

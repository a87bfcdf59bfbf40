"""``task=segmentation`` through the real command line: metrics.json, learning, checkpoints, sweeps, tables.

Tiny settings (ResNet-18, a 32-channel decoder, a small sample under its own cache directory)
keep each run to seconds; the paper's model is what the same commands build without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from carafe_exp.data.ade20k_classes import ADE20K_CLASSES
from carafe_exp.paths import config_dir
from helpers import run_cli

TINY_SEGMENTATION = [
    "task=segmentation",
    "model.backbone.depth=18",
    "model.channels=32",
    "data.root=${paths.cache_dir}/samples/ade20k_tiny",
    "data.num_workers=0",
    "data.batch_size=4",
    "data.sample.num_train=8",
    "data.sample.num_val=4",
    "data.sample.min_side=64",
    "data.sample.max_side=80",
    "data.train_short_sides=[64]",
    "data.test_short_side=64",
    "data.max_long_side=96",
    "logger=none",
]
SAMPLE_CLASS_KEYS = {f"IoU/{name.replace(' ', '_')}" for name in ADE20K_CLASSES}


def metrics_of(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def test_carafe_run_writes_metrics_and_its_checkpoint_evaluates_the_same_on_two_processes(cli_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli([*TINY_SEGMENTATION, "upsampler=carafe", "schedule.max_epochs=1", f"hydra.run.dir={run_dir}"],
                     cli_env)
    record = json.loads((run_dir / "metrics.json").read_text())
    metrics = record["metrics"]
    assert record["task"] == "segmentation" and record["config"]["upsampler"]["name"] == "carafe"
    for name in ("mIoU", "pixel_acc", "mAcc"):
        assert 0.0 <= metrics[name] <= 100.0, metrics
    assert metrics["fps"] > 0
    per_class = {k for k in metrics if k.startswith("IoU/")}
    assert per_class and per_class <= SAMPLE_CLASS_KEYS
    assert "mIoU" in result.stdout and "pixel_acc" in result.stdout
    # Per-class rows stay in metrics.json: the printed table holds one line saying how many.
    assert "IoU/" not in result.stdout and f"{len(per_class)} in metrics.json" in result.stdout

    # The checkpoint, evaluated again by two DDP processes (gloo), gives exactly the same numbers:
    # each image is evaluated once, and the metric sums the areas over the processes.
    again = tmp_path / "evaluated"
    run_cli([*TINY_SEGMENTATION, "upsampler=carafe", "train=false", f"ckpt_path={run_dir}", "trainer=ddp",
             "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={again}"], cli_env)
    reloaded = metrics_of(again)
    assert {k: v for k, v in reloaded.items() if k != "fps"} == {k: v for k, v in metrics.items() if k != "fps"}


def chance_level(sample_root: Path) -> tuple[float, float]:
    """mIoU and pixel accuracy (percent) of predicting the most frequent class everywhere.

    Predicting one class c everywhere gives IoU_c = (pixels of c) / (labelled pixels) and IoU 0 for
    the K - 1 other classes present, so mIoU = freq(c) / K and pixel accuracy = freq(c).
    """
    counts = np.zeros(256, dtype=np.int64)
    for path in (sample_root / "annotations" / "validation").glob("*.png"):
        counts += np.bincount(np.asarray(Image.open(path)).ravel(), minlength=256)
    labelled = counts[1:151]
    frequency = labelled.max() / labelled.sum()
    return 100.0 * frequency / int((labelled > 0).sum()), 100.0 * frequency


@pytest.mark.slow
def test_the_sample_is_learned_well_above_chance(cli_env: dict[str, str], sample_cache: Path,
                                                 tmp_path: Path) -> None:
    """The default schedule on the default sample (a smaller backbone and decoder for speed) learns."""
    run_dir, sample_root = tmp_path / "run", tmp_path / "ade20k"  # a sample of its own, with the default parameters
    run_cli(["task=segmentation", "upsampler=carafe", "model.backbone.depth=18", "model.channels=64",
             f"data.root={sample_root}", "data.num_workers=0", "logger=none", "callbacks=none",
             f"hydra.run.dir={run_dir}"], cli_env, timeout=900)
    metrics = metrics_of(run_dir)
    chance_miou, chance_acc = chance_level(sample_root)
    assert chance_miou < 5.0 and chance_acc < 30.0  # 11 classes, the most frequent covers about a quarter
    assert metrics["mIoU"] > 4 * chance_miou and metrics["pixel_acc"] > chance_acc + 30.0, metrics


def test_bad_data_root_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "ADEChallengeData2016"
    result = run_cli(["task=segmentation", "data=ade20k", f"data.root={missing}", f"hydra.run.dir={tmp_path / 'r'}"],
                     cli_env, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(missing) in errors[0] and "annotations" in errors[0], result.stderr[-2000:]


def sweep_jobs(experiment: str, extra: list[str]) -> list[list[str]]:
    """The jobs ``carafe-exp -m experiment=<experiment> <extra>`` launches, as override lists."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}", *extra],
                      return_hydra_config=True)
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params)
    jobs: list[list[str]] = [[]]
    for override in parsed:
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        jobs = [job + [f"{override.get_key_element()}={value}"] for job in jobs for value in values]
    return jobs


def job_config(experiment: str, job: list[str], extra: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={experiment}", *extra, *job])


@pytest.mark.parametrize("experiment, expected", [
    ("carafe/table5", [("bilinear", "conv", "PFU")] + [("carafe", "conv", "PFU")]),
    ("carafe/table6", [("carafe", "conv", s) for s in ("P", "F", "U", "PF", "PU", "FU", "PFU")]),
    ("carafe_pp/table8", [("bilinear", "conv", "PFU"), ("carafe", "carafe", "PFUB")] * 2),
    ("carafe_pp/table9", [("carafe", "conv", s) for s in ("P", "F", "U", "PF", "PU", "FU", "PFU")]
     + [("carafe", "carafe", "B"), ("carafe", "carafe", "PFUB")]),
])
def test_segmentation_tables_sweep_the_papers_rows(experiment: str, expected: list[tuple[str, str, str]]) -> None:
    extra = ["data.root=/data/ADEChallengeData2016", "data=ade20k", "model.backbone.weights=/runs/classification"]
    jobs = sweep_jobs(experiment, extra)
    seen = []
    for job in jobs:
        cfg = job_config(experiment, job, extra)
        assert cfg.task.name == "segmentation" and cfg.trainer.max_steps == 100_000  # poly_100k
        assert cfg.model._target_.endswith("build_upernet") and cfg.data.kind == "ade20k"
        letters = "".join(letter for site, letter in (("ppm", "P"), ("fpn", "F"), ("fuse", "U"), ("backbone", "B"))
                          if cfg.model.sites[site])
        seen.append((cfg.upsampler.name, cfg.downsampler.name, letters))
    if experiment == "carafe_pp/table8":
        assert sorted(seen) == sorted(expected)
        assert sorted(job[0] for job in jobs) == ["model.backbone.depth=101"] * 2 + ["model.backbone.depth=50"] * 2
    else:
        assert seen == expected


def test_tiny_table_sweep_runs_and_tabulates(cli_env: dict[str, str], tmp_path: Path) -> None:
    """``-m experiment=carafe/table5`` with tiny overrides: both rows run; carafe-tables prints the paper's rows
    and says why these one-batch smoke runs do not fill them."""
    sweep = tmp_path / "sweep"
    run_cli(["-m", "experiment=carafe/table5", *TINY_SEGMENTATION[1:], "model.backbone.weights=null",
             "trainer.fast_dev_run=true", f"hydra.sweep.dir={sweep}"], cli_env, timeout=900)
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted(r["config"]["upsampler"]["name"] for r in records) == ["bilinear", "carafe"]
    assert all(r["config"]["model"]["sites"] == {"ppm": True, "fpn": True, "fuse": True, "backbone": False}
               for r in records)
    tables = subprocess.run([sys.executable, "-m", "carafe_exp.analysis.tables", str(sweep), "--paper",
                             "carafe/table5"], env=cli_env, capture_output=True, text=True, timeout=300)
    assert tables.returncode == 0, tables.stderr[-2000:]
    assert "42.23" in tables.stdout and "40.44" in tables.stdout  # the paper's numbers
    assert "fast_dev_run (one batch): a smoke test, not a result" in " ".join(tables.stdout.split())

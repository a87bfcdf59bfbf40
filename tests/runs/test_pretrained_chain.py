"""Tables that start from a pretraining run refuse to run without its weights (issue #19 §1).

CARAFE++ §5.2: "we adopt different downsampling methods in the ResNet-50 backbone, and then pretrain
the backbone on ImageNet-1k classification dataset. The pretrained backbones are used to train Faster
R-CNN" (Table III); Tables I, V, VII, VIII and IX start from Table II's CARAFE++ backbones. Training
them from torchvision's weights instead is another experiment, so the run is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from carafe_exp.analysis.experiment_jobs import compose_experiment, sweep_jobs
from carafe_exp.analysis.table_setting import table_setting
from carafe_exp.errors import ConfigError
from carafe_exp.paths import config_dir
from carafe_exp.runs.pretrained_chain import check_pretrained_chain, is_experiment
from helpers import run_cli

CHAIN_TABLES = {"carafe_pp/table1": "carafe_pp/table2", "carafe_pp/table3": "carafe_pp/table3_pretrain",
                "carafe_pp/table5": "carafe_pp/table2", "carafe_pp/table7": "carafe_pp/table2",
                "carafe_pp/table8": "carafe_pp/table2", "carafe_pp/table9": "carafe_pp/table2"}


def test_table3_sweep_without_weights_exits_2_with_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    """Issue #19 Done-means: ``carafe-exp -m experiment=carafe_pp/table3 data=coco_sample`` exits 2, one line."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "experiment=carafe_pp/table3", "data=coco_sample", f"hydra.sweep.dir={sweep}"], cli_env,
                     check=False, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("carafe-exp: error: model.backbone.weights is required")
    assert "experiment=carafe_pp/table3_pretrain" in lines[0]
    assert not sweep.exists()  # refused before the first job


def test_single_run_is_refused_but_cfg_job_still_prints(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["experiment=carafe_pp/table8", "data=ade20k_sample", f"hydra.run.dir={tmp_path / 'run'}"],
                     cli_env, check=False, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "model.backbone.weights" in lines[0] and "experiment=carafe_pp/table2" in lines[0]
    printed = run_cli(["experiment=carafe_pp/table8", "data=ade20k_sample", "--cfg", "job"], cli_env, timeout=300)
    assert "pretrained_chain:" in printed.stdout and "model.backbone.weights: carafe_pp/table2" in printed.stdout


def test_the_weights_on_the_command_line_pass_the_check() -> None:
    cfg = compose_experiment("carafe_pp/table3")
    for given in (["model.backbone.weights=/runs/imagenet"], ["model.backbone.weights=null"],
                  ["++model.backbone.weights=IMAGENET1K_V1"]):
        check_pretrained_chain(cfg, ["data=coco", *given], "carafe_pp/table3")
    with pytest.raises(ConfigError, match=r"^model\.backbone\.weights is required by experiment=carafe_pp/table3"):
        check_pretrained_chain(cfg, ["data=coco", "model.backbone.depth=50"], "carafe_pp/table3")
    # Why a marker: the experiment's `???` alone composes to the setting's value (OmegaConf keeps it).
    assert cfg.model.backbone.weights == "IMAGENET1K_V1"


def _open_weights(raw: dict, prefix: str = "") -> set[str]:
    """Keys ``model.weights`` / ``model.backbone.weights`` an experiment file leaves as ``???``."""
    model = raw.get("model") or {}
    found = {"model.weights"} if model.get("weights") == "???" else set()
    if (model.get("backbone") or {}).get("weights") == "???":
        found.add("model.backbone.weights")
    return found


def test_every_experiment_with_open_weights_names_its_pretraining() -> None:
    """Any experiment writing ``???`` for model.weights / model.backbone.weights carries the marker naming
    what provides them (an experiment, or a text); the CARAFE++ chain tables name their ImageNet sweep."""
    experiments = sorted(p.relative_to(config_dir() / "experiment").with_suffix("").as_posix()
                         for p in (config_dir() / "experiment").rglob("*.yaml"))
    for experiment in experiments:
        raw = yaml.safe_load((config_dir() / "experiment" / f"{experiment}.yaml").read_text()) or {}
        marker = table_setting(experiment).pretrained
        assert _open_weights(raw) <= set(marker), f"{experiment}: ??? without a pretrained_chain entry"
        for provider in marker.values():
            assert is_experiment(provider) or " " in provider, f"{experiment}: {provider!r} is no experiment"
    for table, provider in CHAIN_TABLES.items():
        assert table_setting(table).pretrained == {"model.backbone.weights": provider}


def test_table3_pretrain_sweeps_the_six_downsamplers_on_imagenet() -> None:
    """CARAFE++ Table III rows (conv, max/avg pool, DPP, LIP, CARAFE++) each pretrained as §5.1: R-50, 90 epochs,
    64 images per GPU; the pretraining sweep has exactly Table III's downsamplers."""
    jobs = sweep_jobs("carafe_pp/table3_pretrain")
    downsamplers = sorted(job[0].split("=", 1)[1] for job in jobs)
    detection = sorted(job[0].split("=", 1)[1] for job in sweep_jobs("carafe_pp/table3",
                                                                     ["model.backbone.weights=x"]))
    assert downsamplers == detection == sorted(["conv", "maxpool", "avgpool", "dpp", "lip", "carafe"])
    cfg = compose_experiment("carafe_pp/table3_pretrain", ["downsampler=lip"])
    assert (cfg.task.name, cfg.model.backbone.depth, cfg.model.sites.backbone, cfg.downsampler.name) == \
        ("classification", 50, True, "lip")
    assert (cfg.schedule.max_epochs, cfg.data.batch_size, cfg.paper_setting.total_batch) == (90, 64, 1024)

"""A table run on another machine than the paper's says how it differs, and keeps the paper's images.

The papers' machines (conf/paper_setting/): detection and segmentation "a batchsize of 16 over 8 GPUs
(2 images per GPU)", segmentation with "synchronized batch normalization" (CARAFE supplement §1,
CARAFE++ §5.1); detection BatchNorm frozen (mmdetection v1 configs/carafe/*_1x.py, norm_eval=True);
ImageNet "16 GPUs with batch size of 1024, i.e., 64 images per GPU" (CARAFE++ §5.1); inpainting
"Training batch size is 32" (CARAFE supplement §1). The segmentation schedule is 20 CSAIL epochs =
100k iterations at batch 16 (CSAIL train.py epoch_iters=5000): 1.6M images (issue #19 §1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from carafe_exp.errors import ConfigError
from carafe_exp.runs.setting_differences import PaperMachine, apply_paper_setting
from carafe_exp.sweeps.plan import compose_job, without_hydra
from helpers import run_cli


def _job(*overrides: str) -> DictConfig:
    return without_hydra(compose_job(list(overrides)))


def _by_key(differences: list[dict]) -> dict[str, tuple]:
    return {item["key"]: (item["ours"], item["paper"]) for item in differences}


def test_segmentation_table_on_one_device_keeps_the_papers_images_and_names_batch_and_batchnorm() -> None:
    cfg = _job("experiment=carafe/table5", "data=ade20k", "data.root=/data/ade20k")
    differences = _by_key(apply_paper_setting(cfg))
    assert differences["total_batch"] == (2, 16)
    assert differences["devices"] == (1, 8)
    assert differences["bn_statistics"] == ("per device, 2 images", "synchronised over every device, 16 images")
    # 100k iterations at 16 = 1.6M images = 800k iterations at 2; the schedule keeps the paper's count.
    assert (cfg.trainer.max_steps, cfg.schedule.max_steps) == (800_000, 100_000)
    assert differences["iterations"] == (800_000, 100_000)
    assert "per_device_batch" not in differences


def test_the_papers_machine_has_no_differences() -> None:
    cfg = _job("experiment=carafe/table5", "data=ade20k", "data.root=/data/ade20k", "trainer=ddp",
               "trainer.accelerator=gpu", "trainer.devices=8")
    assert apply_paper_setting(cfg) == []
    assert cfg.trainer.max_steps == 100_000


def test_detection_batchnorm_is_frozen_on_any_machine() -> None:
    differences = _by_key(apply_paper_setting(_job("experiment=carafe/table2", "data=coco", "data.root=/c")))
    assert differences == {"total_batch": (2, 16), "devices": (1, 8)}
    unfrozen = _by_key(apply_paper_setting(_job("experiment=carafe/table2", "data=coco", "data.root=/c",
                                                "model.backbone.norm_eval=false")))
    assert unfrozen["bn_statistics"] == ("per device, 2 images", "frozen (statistics of the pretrained weights)")


def test_inpainting_schedule_scales_and_an_explicit_length_is_kept_and_reported() -> None:
    cfg = _job("experiment=carafe/table7", "data=places", "data.root=/p", "data.batch_size=8")
    differences = _by_key(apply_paper_setting(cfg))
    assert cfg.trainer.max_steps == 4_000_000 and differences["total_batch"] == (8, 32)
    assert "devices" not in differences and "bn_statistics" not in differences  # not stated by the papers
    explicit = _job("experiment=carafe/table7", "data=places", "data.root=/p", "data.batch_size=8",
                    "trainer.max_steps=10")
    differences = _by_key(apply_paper_setting(explicit))
    assert explicit.trainer.max_steps == 10
    assert differences["images_seen"] == (80, 1_000_000 * 32)
    kept = _job("experiment=carafe/table7", "data=places", "data.root=/p", "data.batch_size=8",
                "schedule.iterations_at_batch=null")
    apply_paper_setting(kept)
    assert kept.trainer.max_steps == 1_000_000


def test_a_run_outside_the_tables_has_no_paper_machine() -> None:
    assert apply_paper_setting(_job("task=classification")) is None


def test_paper_machine_files_are_checked() -> None:
    with pytest.raises(ConfigError, match="batchnorm=sync"):
        PaperMachine.from_mapping({"total_batch": 16, "devices": 8, "per_device_batch": 2, "batchnorm": "sync"})
    with pytest.raises(ConfigError, match="is not total_batch=16"):
        PaperMachine.from_mapping({"total_batch": 16, "devices": 4, "per_device_batch": 2, "batchnorm": None})


TINY_SEGMENTATION = [
    "model.backbone.depth=18", "model.channels=32", "data.root=${paths.cache_dir}/samples/ade20k_tiny",
    "data.num_workers=0", "data.batch_size=4", "data.sample.num_train=8", "data.sample.num_val=4",
    "data.sample.min_side=64", "data.sample.max_side=80", "data.train_short_sides=[64]", "data.test_short_side=64",
    "data.max_long_side=96", "logger=none", "callbacks=none",
]


@pytest.mark.slow  # about 18 s of CPU (a one-batch UperNet run) and more wall time on a loaded machine
def test_table5_smoke_run_records_its_differences_and_carafe_tables_lists_them(cli_env: dict[str, str],
                                                                                tmp_path: Path) -> None:
    """Issue #19 Done-means: experiment=carafe/table5 with fast_dev_run on one device writes setting_differences
    naming the total batch and the BN regime; carafe-tables lists them under the table."""
    run_dir = tmp_path / "run"
    result = run_cli(["experiment=carafe/table5", *TINY_SEGMENTATION, "model.backbone.weights=null",
                      "trainer.fast_dev_run=true", f"hydra.run.dir={run_dir}"], cli_env, timeout=600)
    assert "differs from the paper's machine" in result.stdout + result.stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    differences = _by_key(record["setting_differences"])
    assert differences["total_batch"] == (4, 16)
    assert differences["bn_statistics"] == ("per device, 4 images", "synchronised over every device, 16 images")
    assert record["config"]["trainer"]["max_steps"] == 400_000  # 1.6M images at batch 4
    tables = subprocess.run([sys.executable, "-m", "carafe_exp.analysis.tables", str(run_dir), "--paper",
                             "carafe/table5"], env=cli_env, capture_output=True, text=True, timeout=300)
    assert tables.returncode == 0, tables.stderr[-2000:]
    text = " ".join(tables.stdout.split())
    assert "machines differ from the paper's in: total_batch: ours 4 in 1 run (paper's 16)" in text
    assert "bn_statistics: ours per device, 4 images in 1 run (paper's synchronised over every device, 16 images)" \
        in text


def test_a_torchvision_stem_on_carafe_table5_is_a_difference() -> None:
    # CARAFE trained Tables 5-6 on CSAIL's code with its deep-stem ResNet (CARAFE supp. §1, footnote 1).
    paper = _job("experiment=carafe/table5", "data=ade20k", "data.root=/a", "model.backbone.weights=/w.pth")
    assert "backbone_stem" not in _by_key(apply_paper_setting(paper))
    ours = _job("experiment=carafe/table5", "data=ade20k", "data.root=/a", "model.backbone.stem=torchvision",
                "model.backbone.weights=IMAGENET1K_V1")
    assert _by_key(apply_paper_setting(ours))["backbone_stem"] == ("torchvision", "deep")

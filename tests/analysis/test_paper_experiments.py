"""Paper tables end to end on the sample data: the real CLI runs a table's sweep with a tiny schedule,
carafe-tables puts the paper's numbers beside ours, a failed job is a hole, test-dev writes the
server's files, and the reassembly kernels of a trained run are drawn.

Tiny overrides change only where and how long a run trains (data, epochs, no pretrained
download), never the table's setting, so every job still counts as its paper row.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from helpers import run_cli

from carafe_exp.analysis.tables import main as tables_main
from carafe_exp.analysis.visualize import main as visualize_main

pytestmark = pytest.mark.slow

TINY_DETECTION = ["model.backbone.weights=null", "schedule.max_epochs=1", "data.sample.num_train=4",
                  "data.sample.num_val=2", "data.sample.num_test=2", "data.num_workers=0"]
TINY_CLASSIFICATION = ["schedule.max_epochs=1", "data.batch_size=8", "data.num_workers=0", "data.image_size=32",
                       "data.resize_size=36", "data.sample.num_classes=4", "data.sample.train_per_class=8",
                       "data.sample.val_per_class=4", "data.sample.size=40", "callbacks=none"]


@pytest.fixture(scope="module")
def detection_sweep(module_tmp_path: Path, sample_cache: Path) -> Path:
    """CARAFE Table 10 (three kernel normalisers), each job trained for one epoch on 4 sample images."""
    import os

    base = module_tmp_path
    env = {**os.environ, "CARAFE_EXP_CACHE": str(sample_cache), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    run_cli(["-m", "experiment=carafe/table10", *TINY_DETECTION, f"data.root={base / 'coco'}",
             f"hydra.sweep.dir={base / 'sweep'}"], env, timeout=900)
    return base


def test_detection_table_beside_the_paper(detection_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = detection_sweep / "sweep"
    records = sorted(sweep.glob("*/metrics.json"))
    assert len(records) == 3
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "completed" and "bbox/AP" in record["metrics"] and record["metrics"]["fps"] > 0
    plot = detection_sweep / "table10.png"
    assert tables_main([str(sweep), "--format", "json", "--plot", str(plot)]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["table"] == "carafe/table10"  # found from the jobs' experiment= override
    assert [r["label"] for r in table["rows"]] == ["Sigmoid", "Sigmoid Normalize", "Softmax"]
    assert [r["status"] for r in table["rows"]] == ["completed"] * 3
    softmax = table["rows"][2]["values"]["bbox/AP"]
    assert softmax["paper"] == 37.8  # [C] Tab. 10
    assert softmax["delta"] == pytest.approx(softmax["ours"] - 37.8)
    assert not table["not_in_table"]
    assert any("schedule.max_epochs 1" in note for note in table["setting_differences"])
    assert plot.stat().st_size > 10_000
    assert tables_main([str(sweep)]) == 0
    text = capsys.readouterr().out
    assert "Sigmoid Normalize" in text and "37.8" in text and "paper" in text


def test_reassembly_kernels_of_a_trained_run(detection_sweep: Path) -> None:
    run_dir = next(p.parent for p in (detection_sweep / "sweep").glob("2_*/metrics.json"))
    image = sorted((detection_sweep / "coco" / "val2017").glob("*.jpg"))[0]
    out = detection_sweep / "kernels.png"
    assert visualize_main([str(run_dir), str(image), "--points", "40,40", "90,70", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as picture:
        assert picture.size[0] > 600
    assert visualize_main([str(run_dir / "nothing"), str(image)]) == 2


def test_classification_table_with_a_failed_job(tmp_path: Path, cli_env: dict[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """CARAFE++ Table XII: two rows run, one job fails (its data is missing), two rows never ran."""
    sweep = tmp_path / "sweep"
    common = ["-m", "experiment=carafe_pp/table12", *TINY_CLASSIFICATION, f"hydra.sweep.dir={sweep}"]
    run_cli([*common, "downsampler.c_m=4,16", f"data.root={tmp_path / 'imagenet'}"], cli_env)
    failed = run_cli([*common, "downsampler.c_m=64", f"data.root={tmp_path / 'nowhere'}", "data.sample=null"],
                     cli_env, check=False)
    assert failed.returncode != 0
    assert tables_main([str(sweep), "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["table"] == "carafe_pp/table12"
    status = {r["label"]: r["status"] for r in table["rows"]}
    assert status == {"C_m 4": "completed", "C_m 8": "missing", "C_m 16": "completed", "C_m 32": "missing",
                      "C_m 64": "failed"}
    c_m_64 = next(r for r in table["rows"] if r["label"] == "C_m 64")
    assert c_m_64["values"]["top1"]["paper"] == 77.46 and c_m_64["values"]["top1"]["ours"] is None  # [C++] Tab. XII
    assert "nowhere" in " ".join(c_m_64["notes"])
    assert tables_main([str(sweep), "--plot", str(tmp_path / "t12.png")]) == 0
    text = capsys.readouterr().out
    assert "failed" in text and "missing" in text and "77.46" in text
    assert (tmp_path / "t12.png").is_file()


def test_test_dev_run_writes_the_server_files(tmp_path: Path, cli_env: dict[str, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """CARAFE Table 1's Mask R-CNN w/ CARAFE on test-dev: zipped bbox and segm results, no local AP."""
    run_dir = tmp_path / "run"
    run_cli(["experiment=carafe/table1", "+row=carafe/table1/mask_rcnn_carafe", *TINY_DETECTION, "callbacks=none",
             f"data.root={tmp_path / 'coco'}", f"hydra.run.dir={run_dir}"], cli_env, timeout=900)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["config"]["data"]["test_split"] == "test-dev2017"
    assert "bbox/AP" not in record["metrics"] and record["metrics"]["fps"] > 0
    zips = sorted((run_dir / "test-dev").glob("*.zip"))
    assert [z.name.split("_")[2] for z in zips] == ["carafe-exp-mask-rcnn-bbox", "carafe-exp-mask-rcnn-segm"]
    with zipfile.ZipFile(zips[1]) as archive:
        results = json.loads(archive.read(archive.namelist()[0]))
    image_ids = {i["id"] for i in json.loads(
        (tmp_path / "coco" / "annotations" / "image_info_test-dev2017.json").read_text())["images"]}
    assert {r["image_id"] for r in results} <= image_ids
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    assert tables_main([str(run_dir), "--format", "json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out)["rows"] if r["label"] == "Mask R-CNN w/ CARAFE")
    assert row["status"] == "server" and str(zips[0]) in " ".join(row["notes"])

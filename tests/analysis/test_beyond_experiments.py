"""The UperNet comparison beyond the papers end to end on the sample data (tiny schedule), published numbers beside.

(The Faster R-CNN one runs in tests/cli/test_own_upsampler.py with an installed entry point.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carafe_exp.analysis.tables import main as tables_main
from helpers import run_cli

# R-50 as the table's setting (the depth identifies the row); no pretrained weights, a narrow decoder.
TINY_SEGMENTATION = ["model.backbone.weights=null", "model.channels=32",
                     "data.root=${paths.cache_dir}/samples/ade20k_tiny", "data.num_workers=0", "data.batch_size=4",
                     "data.sample.num_train=4", "data.sample.num_val=2", "data.sample.min_side=64",
                     "data.sample.max_side=80", "data.train_short_sides=[64]", "data.test_short_side=64",
                     "data.max_long_side=96", "logger=none", "callbacks=none", "schedule.max_steps=1"]


@pytest.mark.slow
def test_upernet_with_guided_upsamplers_beside_the_published_numbers(tmp_path: Path, cli_env: dict[str, str],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep"
    run_cli(["-m", "experiment=beyond/upernet", "upsampler=sapa,indexnet,a2u", *TINY_SEGMENTATION,
             f"hydra.sweep.dir={sweep}"], cli_env, timeout=900)
    records = [json.loads(path.read_text()) for path in sorted(sweep.glob("*/metrics.json"))]
    assert [record["config"]["upsampler"]["name"] for record in records] == ["sapa", "indexnet", "a2u"]
    for record in records:
        assert record["status"] == "completed" and 0 <= record["metrics"]["mIoU"] <= 100
        assert record["config"]["model"]["sites"] == {"ppm": False, "fpn": True, "fuse": False, "backbone": False}
    assert tables_main([str(sweep), "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["table"] == "beyond/upernet"
    rows = {row["label"]: row for row in table["rows"]}
    assert rows["SAPA-B"]["status"] == "completed" and rows["SAPA-B"]["values"]["mIoU"]["paper"] == 41.47
    assert rows["FADE"]["status"] == "missing" and rows["FADE"]["values"]["mIoU"]["paper"] == 41.83
    # tiny-smart/sapa README, spec newer-upsamplers §5
    assert rows["IndexNet"]["status"] == "completed" and rows["IndexNet"]["values"]["mIoU"]["paper"] == 41.42
    assert rows["A2U"]["status"] == "completed" and rows["A2U"]["values"]["mIoU"]["paper"] == 41.37
    assert any("tiny-smart/sapa README" in note for note in table["notes"])

"""``carafe-tables --list`` names each table's paper machine and pretraining experiment (issue #19 §1).

The machines are the papers' (CARAFE supplement §1, CARAFE++ §5.1): detection and segmentation 8 GPUs
x 2 images, segmentation with synchronised BatchNorm, ImageNet 16 GPUs x 64 images, inpainting batch
32; detection BatchNorm frozen as mmdetection v1's norm_eval=True.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from carafe_exp.analysis.experiment_jobs import compose_experiment
from carafe_exp.analysis.paper_numbers import paper_tables
from carafe_exp.analysis.run_records import RunRecord
from carafe_exp.analysis.table_setting import difference_notes, table_setting
from carafe_exp.analysis.tables import main
from carafe_exp.runs.setting_differences import PaperMachine

MACHINES = {"detection": (8, 2, 16, "frozen"), "segmentation": (8, 2, 16, "synchronised"),
            "classification": (16, 64, 1024, "per_device"), "inpainting": (None, None, 32, None)}


def test_every_paper_table_has_its_papers_machine() -> None:
    for table_id, entry in paper_tables().items():
        if table_id.startswith("beyond/"):
            continue  # not the CARAFE papers' tables: their numbers come from each method's own recipe
        machine = table_setting(table_id).machine
        assert machine is not None, table_id
        assert (machine.devices, machine.per_device_batch, machine.total_batch, machine.batchnorm) == \
            MACHINES[entry.task], table_id


@pytest.mark.parametrize("experiment", ["carafe_pp/table3", "carafe_pp/table11", "carafe/table7"])
def test_the_yaml_reader_agrees_with_the_composed_experiment(experiment: str) -> None:
    cfg = compose_experiment(experiment)
    setting = table_setting(experiment)
    assert PaperMachine.from_mapping(cfg.paper_setting) == setting.machine
    assert dict(cfg.get("pretrained_chain") or {}) == dict(setting.pretrained)


def test_list_names_the_machine_and_the_pretraining_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    blocks: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        if line and not line.startswith(" ") and "·" in line:
            current = line.split()[0]
            blocks[current] = ""
        elif line.startswith("    ") and blocks:
            blocks[current] += " " + line.strip()
    assert set(blocks) == set(paper_tables())
    assert "Paper's machine: 8 devices x 2 images = batch 16, BatchNorm synchronised over every device, 16 images" \
        in blocks["carafe/table5"]
    assert "Paper's machine: 16 devices x 64 images = batch 1024, BatchNorm per device, 64 images" \
        in blocks["carafe_pp/table2"]
    assert "Pretraining: run experiment=carafe_pp/table3_pretrain first" in blocks["carafe_pp/table3"]
    for table in ("carafe_pp/table1", "carafe_pp/table5", "carafe_pp/table7", "carafe_pp/table8", "carafe_pp/table9"):
        assert "Pretraining: run experiment=carafe_pp/table2 first" in blocks[table], table
    assert "Pretraining" not in blocks["carafe/table2"]


def test_difference_notes_count_runs_per_key() -> None:
    def run(ours: int) -> RunRecord:
        return RunRecord(Path(f"/runs/{ours}/metrics.json"), {"setting_differences": [
            {"key": "total_batch", "ours": ours, "paper": 16}, {"key": "devices", "ours": 1, "paper": 8}]})

    assert difference_notes([run(2), run(2), run(4), RunRecord(Path("/r/metrics.json"), {})]) == [
        "total_batch: ours 2 / 4 in 3 runs (paper's 16)", "devices: ours 1 in 3 runs (paper's 8)"]

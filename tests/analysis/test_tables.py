"""carafe-tables: runs placed in the paper's rows by their whole setting, holes kept, every format.

The runs are records as ``carafe-exp -m experiment=<table>`` writes them (tests/paper_runs.py),
with our numbers the paper's minus a known offset, so every delta is known in advance.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from paper_runs import OFFSET, paper_minus_offset, write_run

from carafe_exp.analysis.paper_numbers import paper_table
from carafe_exp.analysis.run_records import load_run_records
from carafe_exp.analysis.table_formats import render
from carafe_exp.analysis.table_results import assemble_table, format_like
from carafe_exp.analysis.tables import list_tables, main
from carafe_exp.runs.record import write_json_atomic


@pytest.fixture(scope="module")
def table4_sweep(module_tmp_path: Path) -> Path:
    """CARAFE Table 4: 'none' and 'fpn_mh' completed, 'fpn' failed, 'mh' missing."""
    sweep = module_tmp_path
    rows = paper_table("carafe/table4").run_rows
    write_run(sweep, "carafe/table4", rows[0].job_overrides(), paper_minus_offset("carafe/table4", 0))
    write_run(sweep, "carafe/table4", rows[1].job_overrides(), {}, status="failed",
              error="COCO image missing: /data/coco/train2017/000000000009.jpg")
    write_run(sweep, "carafe/table4", rows[3].job_overrides(), paper_minus_offset("carafe/table4", 3))
    return sweep


def test_rows_in_paper_order_with_ours_paper_delta_and_holes(table4_sweep: Path) -> None:
    records, problems = load_run_records([table4_sweep])
    result = assemble_table(paper_table("carafe/table4"), records, problems=problems)
    assert [r.row.label for r in result.rows] == ["-", "FPN", "M.H.", "FPN + M.H."]
    assert [r.status for r in result.rows] == ["completed", "failed", "missing", "completed"]
    none, fpn, _mh, both = result.rows
    assert none.ours["bbox/AP"] == pytest.approx(37.4 - OFFSET)   # [C] Tab. 4 first row: 37.4
    assert both.delta("segm/AP") == pytest.approx(-OFFSET)
    assert fpn.ours["bbox/AP"] is None and "COCO image missing" in fpn.notes[0]
    assert not result.outsiders


def test_text_at_80_columns_keeps_labels_and_marks_holes(table4_sweep: Path) -> None:
    records, _ = load_run_records([table4_sweep])
    text = render("text", assemble_table(paper_table("carafe/table4"), records), records, [], width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    lines = text.splitlines()
    for label in ("FPN + M.H.", "M.H."):
        assert any(line.startswith(label + " ") for line in lines), label
    assert any("failed" in line and "ours" in line for line in lines)
    assert any("missing" in line and "ours" in line for line in lines)
    assert "…" not in text
    assert "COCO image missing" in text and "no run (missing)" in text


def test_a_run_must_match_the_whole_setting(tmp_path: Path) -> None:
    # Table 3 compares mask-head upsamplers with the FPN unchanged: a Mask R-CNN run with CARAFE in
    # both FPN and mask head (a Table 4 row) and a classification run are not Table 3 rows, even
    # though their upsampler name is one of Table 3's.
    rows = paper_table("carafe/table3").run_rows
    write_run(tmp_path, "carafe/table3", rows[-1].job_overrides(), paper_minus_offset("carafe/table3", 6))
    write_run(tmp_path, "carafe/table4", ["+row=carafe/table4/fpn_mh"], {"segm/AP": 10.0, "bbox/AP": 11.0})
    write_run(tmp_path, "carafe_pp/table12", ["downsampler.c_m=16"], {"top1": 50.0})
    records, _ = load_run_records([tmp_path])
    result = assemble_table(paper_table("carafe/table3"), records)
    carafe = result.rows[-1]
    assert carafe.status == "completed" and len(carafe.runs) == 1
    assert carafe.ours["segm/AP"] == pytest.approx(34.7 - OFFSET)
    reasons = sorted(reason for _, reason in result.outsiders)
    assert len(reasons) == 2
    assert any("model.sites.fpn=true" in r for r in reasons)
    assert any("task.name=classification" in r for r in reasons)


def test_malformed_record_is_reported_with_its_path(table4_sweep: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "sweep" / "9_broken" / "metrics.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    write_run(tmp_path / "sweep", "carafe/table4", ["+row=carafe/table4/none"], paper_minus_offset("carafe/table4", 0))
    assert main([str(tmp_path / "sweep"), "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["table"] == "carafe/table4"  # found from the runs' experiment= override
    assert len(payload["unreadable"]) == 1 and str(broken) in payload["unreadable"][0]
    only_broken = tmp_path / "only"
    only_broken.mkdir()
    (only_broken / "metrics.json").write_text("[1, 2]")
    assert main([str(only_broken)]) == 2
    assert str(only_broken / "metrics.json") in capsys.readouterr().err


def test_unknown_metric_and_table_are_errors(table4_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(table4_sweep), "--metrics", "bbox/AP", "mIoU"]) == 2
    err = capsys.readouterr().err
    assert "--metrics mIoU: not a column of carafe/table4" in err and "segm/APl" in err
    assert main([str(table4_sweep), "--paper", "carafe/table99"]) == 2
    assert "unknown paper table 'carafe/table99'" in capsys.readouterr().err
    assert main([str(table4_sweep / "nowhere")]) == 2


def test_formats(table4_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(table4_sweep), "--format", "csv", "--metrics", "bbox/AP", "segm/AP"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 * 2
    first = rows[0]
    assert (first["label"], first["metric"], first["status"]) == ("-", "bbox/AP", "completed")
    assert float(first["ours"]) == pytest.approx(35.9) and float(first["paper"]) == 37.4
    assert float(first["delta"]) == pytest.approx(-OFFSET)
    assert rows[2]["status"] == "failed" and rows[2]["ours"] == ""
    assert main([str(table4_sweep), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "| - | Bbox | ours | 35.9 |" in markdown and "| FPN | Bbox | ours | failed |" in markdown
    assert main([str(table4_sweep), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"\begin{tabular}{lllrrrrrr}" in latex and r"FPN + M.H. & Bbox & ours & 37.1" in latex
    assert r"$\Delta$" in latex


def test_plot_has_one_panel_per_metric(table4_sweep: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "t4.png"
    assert main([str(table4_sweep), "--metrics", "bbox/AP", "segm/AP", "--plot", str(out)]) == 0
    with Image.open(out) as image:
        two_panels = image.size
    assert main([str(table4_sweep), "--plot", str(tmp_path / "all.png")]) == 0
    with Image.open(tmp_path / "all.png") as image:
        twelve_panels = image.size
    assert twelve_panels[1] > two_panels[1]  # 12 panels take more rows of 3 than 2 do


def test_complexity_columns_are_measured_on_our_modules(tmp_path: Path) -> None:
    # [C] Tab. 2: FLOPs and Params need no run; ours rounds to the paper's text for every upsampler.
    assert format_like(199_496, "199k") == "199k" and format_like(4_718_592, "4.7M") == "4.7M"
    result = assemble_table(paper_table("carafe/table2"), [], columns=["bbox/AP", "FLOPs", "Params"])
    assert [r.status for r in result.rows] == ["missing"] * 9
    assert [(r.ours["FLOPs"], r.ours["Params"]) for r in result.rows] == [
        (r.paper("FLOPs"), r.paper("Params")) for r in result.rows]


def test_list_names_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for n in range(1, 11):
        assert f"carafe/table{n} " in out
    for n in range(1, 15):
        assert f"carafe_pp/table{n} " in out
    assert "CARAFE++ Table XIV" in out
    # Piped output is 80 columns wide: no line overflows it, no description is squeezed.
    narrow = list_tables(width=80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert "Needs: COCO 2017" in narrow.replace("\n    ", " ")


def test_runs_without_a_paper_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for index, name in enumerate(("nearest", "carafe")):
        write_json_atomic(tmp_path / f"{index}_upsampler={name}" / "metrics.json", {
            "task": "detection", "overrides": ["task=detection", f"upsampler={name}"],
            "metrics": {"bbox/AP": 10.0 + index, "fps": 3.0}, "config": {"upsampler": {"name": name}}})
    assert main([str(tmp_path), "--format", "json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["run"] for r in runs] == ["upsampler=nearest", "upsampler=carafe"]
    assert runs[1]["metrics"]["bbox/AP"] == 11.0
    assert main([str(tmp_path), "--metrics", "top1"]) == 2
    assert "no run has it" in capsys.readouterr().err


def test_runs_left_out_for_one_reason_are_one_note(tmp_path: Path) -> None:
    # A Table 2 sweep run at ResNet-101 does not belong to the R-50 table: one note names the
    # reason once and lists the jobs, instead of one sentence per job.
    for upsampler in ("nearest", "carafe"):
        write_run(tmp_path, "carafe/table2", [f"upsampler={upsampler}"], {"bbox/AP": 30.0},
                  extra=("model.backbone.depth=101",))
    records, _ = load_run_records([tmp_path])
    result = assemble_table(paper_table("carafe/table2"), records)
    assert len(result.outsiders) == 2
    notes = [note for note in result.footnotes() if note.startswith("Not in this table")]
    assert len(notes) == 1 and "(2 runs)" in notes[0] and "model.backbone.depth=101" in notes[0], notes


def test_a_fast_dev_run_is_not_a_result(tmp_path: Path) -> None:
    # trainer.fast_dev_run trains and tests on one batch: its numbers must not fill a row.
    rows = paper_table("carafe/table4").run_rows
    path = write_run(tmp_path, "carafe/table4", rows[0].job_overrides(), paper_minus_offset("carafe/table4", 0))
    record = json.loads(path.read_text())
    record["config"]["trainer"] = {"fast_dev_run": True}
    write_json_atomic(path, record)
    records, _ = load_run_records([tmp_path])
    result = assemble_table(paper_table("carafe/table4"), records)
    assert result.rows[0].status == "missing" and not result.rows[0].runs
    notes = [note for note in result.footnotes() if note.startswith("Not in this table")]
    assert len(notes) == 1 and "fast_dev_run" in notes[0], notes


def test_an_evaluation_of_a_released_model_fills_the_papers_baseline_row(tmp_path: Path) -> None:
    # Issue #18: CSAIL's released UperNet R-50 (CARAFE Table 5's baseline, 40.44 / 79.80) evaluated with
    # model.weights and train=false is the bilinear row, its source named under the table.
    rows = paper_table("carafe/table5").run_rows
    path = write_run(tmp_path, "carafe/table5", rows[0].job_overrides(), {"mIoU": 40.44, "pixel_accuracy": 79.80})
    record = json.loads(path.read_text())
    record["config"]["train"] = False
    record["config"]["model"]["weights"] = "/data/csail/ade20k-resnet50-upernet"
    record["config"]["model"]["backbone"]["weights"] = None
    write_json_atomic(path, record)
    records, _ = load_run_records([tmp_path])
    result = assemble_table(paper_table("carafe/table5"), records)
    baseline = next(r for r in result.rows if r.row.label == rows[0].label)
    assert baseline.status == "completed" and baseline.ours["mIoU"] == pytest.approx(40.44)
    assert any("ade20k-resnet50-upernet" in note for note in result.footnotes()), result.footnotes()

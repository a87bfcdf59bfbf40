"""carafe-tables reads a sweep's metrics.json files and puts the paper's numbers beside ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from carafe_exp.analysis.tables import build_table, find_records, main, run_labels
from carafe_exp.run_record import write_json_atomic


def _write(sweep: Path, num: int, upsampler: str, ap: float) -> None:
    write_json_atomic(sweep / f"{num}_upsampler={upsampler}" / "metrics.json", {
        "task": "detection", "overrides": ["task=detection", f"upsampler={upsampler}"],
        "metrics": {"bbox/AP": ap, "bbox/AP50": ap + 20, "fps": 3.0},
        "config": {"upsampler": {"name": upsampler}}, "versions": {}, "wall_time_s": 1.0, "throughput": {}})


def test_rows_are_labelled_by_what_differs(tmp_path: Path) -> None:
    _write(tmp_path, 0, "nearest", 10.0)
    _write(tmp_path, 1, "carafe", 12.5)
    records = find_records([tmp_path])
    assert run_labels([r for _, r in records]) == ["upsampler=nearest", "upsampler=carafe"]


def test_paper_numbers_beside_ours(tmp_path: Path) -> None:
    _write(tmp_path, 0, "nearest", 10.0)
    _write(tmp_path, 1, "carafe", 12.5)
    from carafe_exp.analysis.paper_numbers import CARAFE_TABLE2

    console = Console(width=200, record=True)
    console.print(build_table(find_records([tmp_path]), paper=CARAFE_TABLE2))
    text = console.export_text()
    assert "10.0 (36.5)" in text and "12.5 (37.8)" in text and "32.5 (60.1)" in text


def test_cli_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, 0, "nearest", 10.0)
    assert main([str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["metrics"]["bbox/AP"] == 10.0
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2

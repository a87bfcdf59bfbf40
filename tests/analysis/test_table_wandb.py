"""carafe-tables --wandb: the table and its plot go to W&B in the sweep's group, offline without credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paper_runs import OFFSET, paper_minus_offset, write_run

from carafe_exp.analysis.paper_numbers import paper_table
from carafe_exp.analysis.tables import main



def test_table_and_plot_logged_offline_to_the_sweeps_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    sweep = tmp_path / "multirun" / "12-00-00-000000"
    rows = paper_table("carafe/table10").run_rows
    write_run(sweep, "carafe/table10", rows[2].job_overrides(), paper_minus_offset("carafe/table10", 2))
    write_run(sweep, "carafe/table10", rows[0].job_overrides(), {}, status="failed", error="out of memory")
    assert main([str(sweep), "--wandb", "--plot", str(tmp_path / "t10.png")]) == 0
    capsys.readouterr()

    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].rglob("*.table.json"))
    long_form = next(t for t in tables if "ours" not in t.name)
    payload = json.loads(long_form.read_text())
    assert payload["columns"] == ["row", "label", "status", "metric", "ours", "paper", "delta"]
    by_key = {(r[1], r[3]): r for r in payload["data"]}
    softmax_ap = by_key[("Softmax", "bbox/AP")]
    assert softmax_ap[4] == pytest.approx(37.8 - OFFSET) and softmax_ap[5] == 37.8  # [C] Tab. 10
    assert softmax_ap[6] == pytest.approx(-OFFSET)
    assert by_key[("Sigmoid", "bbox/AP")][2] == "failed"
    assert by_key[("Sigmoid Normalize", "bbox/AP")][2] == "missing"
    assert list(runs[0].rglob("*.png")), "the plot is logged as an image"
    # The run record (group, job type, config) is in the offline log, synced later by `wandb sync`:
    # the group is the sweep directory's name, the group every job of the sweep logged to.
    log = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"12-00-00-000000" in log and b"paper-table" in log and b"carafe/table10" in log


def test_group_is_the_one_the_jobs_logged_to_even_from_inside_the_sweep(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``carafe-tables . --wandb`` run inside the sweep directory named the group '' (``Path('.').name``)."""
    from carafe_exp.analysis.run_records import load_run_records
    from carafe_exp.analysis.table_wandb import sweep_group

    sweep = tmp_path / "multirun" / "12-00-00-000000"
    write_run(sweep, "carafe/table10", paper_table("carafe/table10").run_rows[2].job_overrides(), {})
    monkeypatch.chdir(sweep)
    records, _ = load_run_records(["."])
    assert sweep_group(records) == "12-00-00-000000"
    # A group the jobs logged to (metrics.json ``wandb.group``) wins over the directory's name.
    record = json.loads(records[0].path.read_text())
    record["wandb"] = {"group": "my-group"}
    records[0].path.write_text(json.dumps(record))
    assert sweep_group(load_run_records(["."])[0]) == "my-group"

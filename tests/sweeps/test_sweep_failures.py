"""A sweep survives failed jobs: each leaves a failed record, the others run, the end says how many failed."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import TINY_CLASSIFICATION, run_cli


def _records(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}


def test_every_failed_job_leaves_a_record_and_the_sweep_exits_non_zero(cli_env: dict[str, str],
                                                                        tmp_path: Path) -> None:
    """The report's reproduction: the sweep stopped after job #0 and left nothing in its directory."""
    sweep = tmp_path / "sweep"
    first, second = tmp_path / "nonexistent1", tmp_path / "nonexistent2"
    result = run_cli(["-m", "task=classification", "data=imagenet", f"data.root={first},{second}",
                      f"hydra.sweep.dir={sweep}"], cli_env, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    records = _records(sweep)
    assert len(records) == 2, (sorted(records), result.stderr[-3000:])
    for (name, record), root in zip(sorted(records.items()), (first, second)):
        assert record["status"] == "failed" and f"data.root={root} does not exist" in record["error"], record
        assert f"data.root={root}" in record["overrides"] and record["config"]["data"]["root"] == str(root)
    summary = result.stderr[result.stderr.rindex("2 of 2 jobs failed"):]
    assert all(f"{sweep / name}: data.root=" in summary for name in records), result.stderr[-3000:]


def test_jobs_after_a_failed_one_still_run(cli_env: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *TINY_CLASSIFICATION, "downsampler=carafe", "downsampler.k_down=4,3",
                      "trainer.fast_dev_run=true", "logger=none", f"hydra.sweep.dir={sweep}"], cli_env, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    records = _records(sweep)
    names = sorted(records)
    # The swept key leads the directory name, ahead of the fixed overrides that sort before it.
    assert names[0].startswith("0_downsampler.k_down=4,") and names[1].startswith("1_downsampler.k_down=3,"), names
    failed, completed = records[names[0]], records[names[1]]
    assert failed["status"] == "failed" and failed["error"].startswith("downsampler.k_down=4 is not valid")
    assert completed["status"] == "completed" and 0 <= completed["metrics"]["top1"] <= 100
    assert "1 of 2 jobs failed" in result.stderr

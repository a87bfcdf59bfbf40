"""Paper-table runs for tests: metrics.json records as ``carafe-exp -m experiment=<table>`` writes them.

The config of each record is composed from the experiment config itself (the nodes a table
compares), and our numbers are the paper's minus :data:`OFFSET`, so every delta is known.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from carafe_exp.analysis.experiment_jobs import SETTING_NODES, compose_experiment
from carafe_exp.analysis.paper_numbers import paper_table
from carafe_exp.runs.record import write_json_atomic

OFFSET = 1.5


def write_run(directory: Path, experiment: str, job: list[str], metrics: dict[str, float], status: str = "completed",
              error: str | None = None, extra: tuple[str, ...] = (), record_experiment: str | None = None) -> Path:
    cfg = compose_experiment(experiment, [*job, *extra])
    config = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in SETTING_NODES}
    config["data"] = {"test_split": cfg.data.get("test_split"), "sample": None}
    record = {"task": config["task"]["name"], "overrides": [f"experiment={record_experiment or experiment}", *job,
                                                             *extra],
              "metrics": metrics, "config": config, "status": status, "versions": {}, "wall_time_s": 1.0,
              "throughput": {}, "device": {"accelerator": "cpu", "name": "Test CPU", "count": 1}}
    if error:
        record["error"] = error
    path = directory / "_".join(job).replace("/", "_").replace("+", "") / "metrics.json"
    write_json_atomic(path, record)
    return path


def paper_minus_offset(table_id: str, row_index: int) -> dict[str, float]:
    row = paper_table(table_id).run_rows[row_index]
    return {c: v - OFFSET for c, v in row.values.items() if isinstance(v, float)}

"""``carafe-tables --wandb``: the finished table as a W&B Table, and its plot, in the sweep's group.

The W&B run joins the group the sweep's jobs logged to (their ``logger.wandb.group``, else the
sweep directory's name, which is the group a sweep's jobs get by default), so the table sits
beside the jobs on the dashboard. Without a W&B login it is written offline under
``<sweep dir>/wandb`` (``wandb sync`` uploads it later); online or offline is decided as for a
run's own W&B logger (:func:`carafe_exp.runs.loggers.wandb_mode`: ``WANDB_MODE``, then credentials).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carafe_exp.analysis.run_records import RunRecord
from carafe_exp.analysis.table_formats import format_value
from carafe_exp.analysis.table_results import TableResult
from carafe_exp.runs.loggers import sweep_group as job_group
from carafe_exp.runs.loggers import wandb_mode

DEFAULT_PROJECT = "carafe-exp"


def sweep_group(records: Sequence[RunRecord]) -> str | None:
    """The W&B group of the runs: the one they logged to (metrics.json ``wandb.group``, else their
    ``logger.wandb.group``), else their sweep directory's name as the jobs' loggers name it."""
    groups = []
    for run in records:
        logger_cfg = (run.config.get("logger") or {}).get("wandb") or {}
        logged = (run.data.get("wandb") or {}).get("group") if isinstance(run.data.get("wandb"), dict) else None
        groups.append(logged or logger_cfg.get("group") or job_group(run.run_dir.parent))
    return Counter(groups).most_common(1)[0][0] if groups else None


def _project(records: Sequence[RunRecord]) -> str:
    for run in records:
        project = ((run.config.get("logger") or {}).get("wandb") or {}).get("project")
        if project:
            return str(project)
    return DEFAULT_PROJECT


def table_rows(result: TableResult) -> tuple[list[str], list[list[Any]]]:
    """Long-form rows for a W&B Table: one line per (row, column) with ours, the paper's and the delta."""
    columns = ["row", "label", "status", "metric", "ours", "paper", "delta"]
    data = []
    for row in result.rows:
        for column in result.columns:
            ours, paper, delta = row.ours.get(column), row.paper(column), row.delta(column)
            data.append([row.row.key, row.row.label, row.status, column,
                         ours if isinstance(ours, (int, float)) or ours is None else str(ours),
                         paper if isinstance(paper, (int, float)) or paper is None else str(paper),
                         delta if isinstance(delta, (int, float)) or delta is None else str(delta)])
    return columns, data


def log_table_to_wandb(result: TableResult, records: Sequence[RunRecord], plot: Path | None,
                       directory: Path) -> str:
    """Log the table (and the plot) to W&B; returns the run's local directory."""
    import wandb

    group = sweep_group(records)
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=_project(records), group=group, job_type="paper-table",
                     name=f"{result.table.id.replace('/', '-')}", dir=str(directory), mode=wandb_mode(None),
                     config={"table": result.table.id, "paper": result.table.paper_title,
                             "runs": [str(r.run_dir) for r in records]},
                     tags=["table", result.table.id], reinit="finish_previous")
    try:
        columns, data = table_rows(result)
        payload: dict[str, Any] = {f"tables/{result.table.id}": wandb.Table(columns=columns, data=data)}
        summary_columns = ["label", *result.columns]
        summary = [[row.row.label, *[format_value(c, row.ours.get(c)) for c in result.columns]]
                   for row in result.rows]
        payload[f"tables/{result.table.id}/ours"] = wandb.Table(columns=summary_columns, data=summary)
        if plot is not None:
            payload[f"plots/{result.table.id}"] = wandb.Image(str(plot))
        run.log(payload)
        return str(run.dir)
    finally:
        run.finish()
        # The offline log is written by W&B's service process: wait for it to flush and stop, so the
        # files are complete when this returns (a `wandb sync` right after sees everything).
        wandb.teardown()


__all__ = ["log_table_to_wandb", "sweep_group", "table_rows"]

"""``carafe-tables``: one table of a sweep's metrics.json files, with the paper's numbers beside ours.

    carafe-tables outputs/multirun/2026-11-21/10-00-00-000000
    carafe-tables outputs/multirun/... --paper carafe/table2 --metrics bbox/AP bbox/AP50

Rows are runs, labelled by the overrides that differ between them; columns are the metrics
(DESIGN names). With ``--paper``, each row whose config matches a row of that paper table gets
the paper's value beside ours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from carafe_exp.analysis.paper_numbers import PAPER_TABLES, PaperTable
from carafe_exp.run_record import METRICS_FILE, read_record

METRIC_ORDER = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl", "segm/AP", "segm/AP50",
                "segm/AP75", "segm/APs", "segm/APm", "segm/APl", "mIoU", "pixel_acc", "L1", "PSNR", "top1", "top5",
                "fps")


def find_records(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every metrics.json under ``paths`` (files or directories), sorted by path."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(path.rglob(METRICS_FILE))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return [(p, read_record(p)) for p in sorted(set(found))]


def _select(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """A label per run: the overrides that are not shared by every run (all of them for one run)."""
    override_sets = [list(r.get("overrides", [])) for r in records]
    shared = set.intersection(*(set(o) for o in override_sets)) if len(override_sets) > 1 else set()
    return [",".join(o for o in overrides if o not in shared) or "(defaults)" for overrides in override_sets]


def metric_columns(records: Sequence[dict[str, Any]], wanted: Sequence[str] | None,
                   paper: PaperTable | None) -> list[str]:
    if wanted:
        return list(wanted)
    present = {name for r in records for name in r.get("metrics", {})}
    if paper is not None:
        return [m for m in paper.metrics if m in present] or list(paper.metrics)
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER) - {"loss"})


def build_table(records: Sequence[tuple[Path, dict[str, Any]]], metrics: Sequence[str] | None = None,
                paper: PaperTable | None = None) -> Table:
    """The rich table: one row per run, ours (and the paper's, in brackets) per metric."""
    payloads = [r for _, r in records]
    columns = metric_columns(payloads, metrics, paper)
    table = Table(title=paper.title if paper else f"{len(payloads)} runs")
    table.add_column("run")
    for column in columns:
        table.add_column(column + (" (paper)" if paper else ""), justify="right")
    for label, record in zip(run_labels(payloads), payloads):
        paper_row = paper.rows.get(str(_select(record.get("config", {}), paper.match))) if paper else None
        cells = []
        for column in columns:
            ours = record.get("metrics", {}).get(column)
            cell = "—" if ours is None else f"{ours:.1f}"
            if paper is not None:
                theirs = paper_row[paper.metrics.index(column)] if paper_row and column in paper.metrics else None
                cell += f" ({theirs:.1f})" if theirs is not None else " (—)"
            cells.append(cell)
        table.add_row(label, *cells)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``carafe-tables``)."""
    parser = argparse.ArgumentParser(prog="carafe-tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep or run directories, or metrics.json files")
    parser.add_argument("--metrics", nargs="*", help="metric columns (default: every metric found)")
    parser.add_argument("--paper", choices=sorted(PAPER_TABLES), help="print this paper table's numbers beside ours")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        records = find_records(args.paths)
    except (FileNotFoundError, json.JSONDecodeError) as error:
        print(f"carafe-tables: error: {error}", file=sys.stderr)
        return 2
    if not records:
        print(f"carafe-tables: error: no {METRICS_FILE} under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    if args.json:
        labels = run_labels([r for _, r in records])
        print(json.dumps([{"run": label, "path": str(path), "metrics": record.get("metrics", {})}
                          for label, (path, record) in zip(labels, records)], indent=2))
        return 0
    Console().print(build_table(records, args.metrics, PAPER_TABLES.get(args.paper) if args.paper else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

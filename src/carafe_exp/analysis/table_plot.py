"""``carafe-tables --plot``: ours against the paper's, one panel per metric, rows in the paper's order.

Each panel is a horizontal grouped bar chart (row labels are long; they read best on the y axis):
our value and the paper's side by side per row, the difference written at the bar's end, and a
hole (failed / missing / evaluated by the COCO server) written where our bar would be.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from carafe_exp.analysis.paper_numbers import COMPLEXITY_COLUMNS
from carafe_exp.analysis.run_records import COMPLETED, RunRecord
from carafe_exp.analysis.table_formats import HEADERS, format_value
from carafe_exp.analysis.table_results import REFERENCE, TableResult

OURS_COLOUR, PAPER_COLOUR = "#d95f02", "#7570b3"
GROUP_TITLES = {"bbox": "box", "segm": "mask"}


def _panel_title(column: str) -> str:
    group, _, name = column.rpartition("/")
    title = HEADERS.get(name, name)
    return f"{GROUP_TITLES.get(group, group)} {title}" if group else title


def plot_table(result: TableResult, path: str | os.PathLike[str]) -> Path:
    """Write the plot of a paper table to ``path`` (PNG); returns the path."""
    columns = [c for c in result.columns if c not in COMPLEXITY_COLUMNS]
    labels = [r.row.label for r in result.rows]
    panels = []
    for column in columns:
        ours = [r.ours.get(column) if r.status != REFERENCE else None for r in result.rows]
        paper = [r.paper(column) for r in result.rows]
        holes = [r.status if (r.status != REFERENCE and r.ours.get(column) is None) else "" for r in result.rows]
        panels.append((column, ours, paper, holes))
    title = f"{result.table.name}: ours vs the paper's"
    return _draw(title, labels, panels, path, with_paper=True)


def plot_runs(records: Sequence[RunRecord], labels: Sequence[str], columns: Sequence[str],
              path: str | os.PathLike[str]) -> Path:
    """Write the plot of runs without a paper table (ours only)."""
    panels = [(c, [r.metrics.get(c) for r in records], [None] * len(records),
               ["" if r.status == COMPLETED else r.status for r in records]) for c in columns]
    return _draw(f"{len(records)} runs", list(labels), panels, path, with_paper=False)


def _draw(title: str, labels: Sequence[str], panels: Sequence[tuple], path: str | os.PathLike[str],
          with_paper: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(len(panels), 1)
    ncols = min(3, count)
    nrows = math.ceil(count / ncols)
    height = max(2.2, 0.42 * len(labels) + 1.2)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.8, height * nrows), squeeze=False)
    bar = 0.38 if with_paper else 0.6
    for index, (column, ours, paper, holes) in enumerate(panels):
        axis = axes[index // ncols][index % ncols]
        positions = list(range(len(labels)))
        values = [v for v in list(ours) + list(paper) if isinstance(v, (int, float))]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        span = (high - low) or max(abs(high), 1.0)
        left = max(0.0, low - 0.6 * span) if low >= 0 else low - 0.2 * span
        axis.set_xlim(left, high + 0.45 * span)
        offset = bar / 2 if with_paper else 0.0
        for y, value, hole in zip(positions, ours, holes):
            if isinstance(value, (int, float)):
                axis.barh(y - offset, value - left, bar, left=left, color=OURS_COLOUR,
                          label="ours" if y == next((p for p, v in zip(positions, ours) if v is not None), -1) else None)
            elif hole:
                axis.text(left + 0.02 * span, y - offset, hole, va="center", fontsize=7, color="#b2182b",
                          fontweight="bold")
        if with_paper:
            for y, value, mine in zip(positions, paper, ours):
                if isinstance(value, (int, float)):
                    axis.barh(y + offset, value - left, bar, left=left, color=PAPER_COLOUR,
                              label="paper" if y == next(p for p, v in zip(positions, paper) if v is not None) else None)
                    if isinstance(mine, (int, float)):
                        axis.text(max(mine, value) + 0.03 * span, y, format_value(column, mine - value, signed=True),
                                  va="center", fontsize=7)
        axis.set_yticks(positions)
        axis.set_yticklabels(labels if index % ncols == 0 else [""] * len(labels), fontsize=8)
        axis.invert_yaxis()
        axis.set_title(_panel_title(column), fontsize=9)
        axis.tick_params(axis="x", labelsize=7)
        axis.grid(axis="x", alpha=0.3)
    for index in range(len(panels), nrows * ncols):
        axes[index // ncols][index % ncols].axis("off")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, names, loc="upper right", fontsize=8, ncol=2)
    figure.suptitle(title, fontsize=10, x=0.01, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(staging, dpi=110)
    plt.close(figure)
    os.replace(staging, path)
    return path


__all__ = ["plot_runs", "plot_table"]

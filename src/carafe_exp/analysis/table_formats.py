"""``carafe-tables`` output formats: terminal text, Markdown, CSV, LaTeX and JSON.

A paper table is laid out as the paper prints it (its columns, rows in its order; Box and Mask
AP as Task sub-rows when a table has both), each row as three lines: ours, the paper's, and the
difference. A hole (a run that failed, is missing, or is evaluated by the COCO server) keeps its
line, with the reason in its first cell and in the notes under the table. Row labels are never
cut: at 80 columns (the width of a pipe) they wrap instead.

Without a paper table the runs are listed one per line, labelled by the overrides that differ
between them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from carafe_exp.analysis.run_records import COMPLETED, RunRecord
from carafe_exp.analysis.table_results import MISSING, REFERENCE, RowResult, TableResult

FORMATS = ("text", "markdown", "csv", "latex", "json")
# The papers print these with two decimals, everything else (AP, fps) with one.
TWO_DECIMALS = ("mIoU", "pixel_acc", "L1", "PSNR", "top1", "top5")
HEADERS = {"pixel_acc": "P.A.", "L1": "L1(%)", "PSNR": "PSNR(dB)", "top1": "Top-1", "top5": "Top-5", "fps": "FPS"}
GROUP_NAMES = {"bbox": "Bbox", "segm": "Segm"}
# Metrics in the order the runs-only listing shows them.
METRIC_ORDER = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl", "segm/AP", "segm/AP50",
                "segm/AP75", "segm/APs", "segm/APm", "segm/APl", "mIoU", "pixel_acc", "L1", "PSNR", "top1", "top5",
                "fps")
EMPTY = "—"


def format_value(column: str, value: Any, signed: bool = False) -> str:
    if value is None:
        return EMPTY
    if isinstance(value, str):
        return value
    decimals = 2 if column.split("/")[-1] in TWO_DECIMALS else 1
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


@dataclass
class Grid:
    """A table as lines of text cells: the common form of the text, Markdown and LaTeX outputs."""

    title: str
    header: list[str]
    lines: list[list[str]]
    text_columns: int
    section_starts: set[int] = field(default_factory=set)
    footnotes: list[str] = field(default_factory=list)


def _layout(columns: Sequence[str]) -> tuple[list[str | None], list[str]]:
    """Task groups (``bbox``, ``segm``; ``[None]`` when there is one) and the display columns."""
    groups = list(dict.fromkeys(c.split("/")[0] for c in columns if "/" in c))
    if len(groups) <= 1:
        return [None], list(columns)
    shown = list(dict.fromkeys(c.split("/", 1)[1] if "/" in c else c for c in columns))
    return list(groups), shown


def _column_for(group: str | None, shown: str, columns: Sequence[str]) -> str | None:
    if group is None:
        return shown
    name = f"{group}/{shown}"
    return name if name in columns else (shown if shown in columns else None)


def _status_cells(result: RowResult, names: Sequence[str | None]) -> list[str]:
    cells = [EMPTY] * len(names)
    if names:
        cells[0] = result.status
    return cells


def table_grid(result: TableResult) -> Grid:
    """The paper's layout with ours / paper / Δ lines per row."""
    groups, shown = _layout(result.columns)
    multi = groups != [None]
    header = ["Method"] + (["Task"] if multi else []) + [""]
    header += [HEADERS.get(name.split("/")[-1], name.split("/")[-1]) for name in shown]
    lines: list[list[str]] = []
    starts: set[int] = set()
    for row_result in result.rows:
        starts.add(len(lines))
        label = row_result.row.label + ("" if row_result.row.certain is not False else " (inferred)")
        first = True
        for group_index, group in enumerate(groups):
            names = [_column_for(group, s, result.columns) for s in shown]
            # Columns without a task group (fps) sit on the first group's lines, as in the paper.
            names = [n if (n is not None and ("/" in n or group_index == 0)) else None for n in names]
            if multi and all(row_result.paper(n) is None and row_result.ours.get(n) is None for n in names if n):
                continue  # a group the row does not have (no mask AP for Faster R-CNN)
            # An extra row (a resampler the paper does not have) has no paper line to compare with.
            kinds = ("paper",) if row_result.status == REFERENCE else ("ours",) if row_result.extra \
                else ("ours", "paper", "Δ")
            for kind in kinds:
                prefix = [label if first else ""] + ([GROUP_NAMES.get(group, group) if kind == kinds[0] else ""]
                                                     if multi else [])
                first = False
                if kind == "paper":
                    cells = [format_value(n, row_result.paper(n)) if n else "" for n in names]
                elif kind == "ours":
                    if row_result.status == COMPLETED or any(row_result.ours.get(n) is not None for n in names if n):
                        cells = [format_value(n, row_result.ours.get(n)) if n else "" for n in names]
                        if row_result.status != COMPLETED:
                            cells = [row_result.status if c == EMPTY else c for c in cells[:1]] + cells[1:]
                    else:
                        cells = _status_cells(row_result, names)
                else:
                    cells = [format_value(n, row_result.delta(n), signed=True) if n else "" for n in names]
                lines.append(prefix + [kind] + cells)
    title = f"{result.table.name}: {result.table.title}"
    return Grid(title, header, lines, len(header) - len(shown), starts, result.footnotes())


def _differing_labels(records: Sequence[RunRecord]) -> list[str]:
    override_sets = [r.overrides for r in records]
    shared = set.intersection(*(set(o) for o in override_sets)) if len(override_sets) > 1 else set()
    return [",".join(o for o in overrides if o not in shared) or "(defaults)" for overrides in override_sets]


def runs_columns(records: Sequence[RunRecord], wanted: Sequence[str] | None) -> list[str]:
    present = {name for r in records for name in r.metrics}
    if wanted:
        return list(wanted)
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER) - {"loss"})


def runs_grid(records: Sequence[RunRecord], columns: Sequence[str], problems: Sequence[str] = ()) -> Grid:
    """One line per run (no paper table): label, status, metrics."""
    lines = []
    for label, run in zip(_differing_labels(records), records):
        cells = [format_value(c, run.metrics.get(c)) for c in columns]
        if run.status != COMPLETED and cells:
            cells[0] = run.status
        lines.append([label] + cells)
    notes = [f"Failed: {run.run_dir}: {run.error or 'no error recorded'}" for run in records if run.status != COMPLETED]
    notes += [f"Unreadable: {p}" for p in problems]
    return Grid(f"{len(records)} runs", ["run"] + list(columns), lines, 1, set(range(len(lines))), notes)


# -- text -----------------------------------------------------------------------------------------
def render_text(grid: Grid, width: int | None = None) -> str:
    table = Table(title=grid.title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left")
    for index, name in enumerate(grid.header):
        if index == 0:
            # Labels wrap (never end in "…"): rows must stay distinguishable at 80 columns.
            table.add_column(name, overflow="fold", min_width=min(14, max(len(l[0]) for l in grid.lines or [[""]])),
                             ratio=1)
        elif index < grid.text_columns:
            table.add_column(name, no_wrap=True)
        else:
            table.add_column(name, justify="right", no_wrap=True)
    for index, line in enumerate(grid.lines):
        if index in grid.section_starts and index and len(grid.section_starts) < len(grid.lines):
            table.add_section()
        table.add_row(*line)
    console = Console(width=width, record=True, file=io.StringIO(), highlight=False)
    console.print(table)
    for note in grid.footnotes:
        console.print(f"* {note}", overflow="fold", soft_wrap=False)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


# -- Markdown -------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(grid: Grid) -> str:
    out = [f"**{_md_cell(grid.title)}**", "", "| " + " | ".join(_md_cell(h) or " " for h in grid.header) + " |",
           "| " + " | ".join("---" if i < grid.text_columns else "---:" for i in range(len(grid.header))) + " |"]
    out += ["| " + " | ".join(_md_cell(c) for c in line) + " |" for line in grid.lines]
    if grid.footnotes:
        out.append("")
        out += [f"- {_md_cell(note)}" for note in grid.footnotes]
    return "\n".join(out) + "\n"


# -- LaTeX ----------------------------------------------------------------------------------------
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$",
                  "—": "--", "≠": r"$\neq$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(grid: Grid) -> str:
    spec = "l" * grid.text_columns + "r" * (len(grid.header) - grid.text_columns)
    out = [f"% {latex_escape(grid.title)}", r"\begin{tabular}{" + spec + "}", r"\toprule",
           " & ".join(latex_escape(h) for h in grid.header) + r" \\", r"\midrule"]
    for index, line in enumerate(grid.lines):
        if index in grid.section_starts and index and len(grid.section_starts) < len(grid.lines):
            out.append(r"\midrule")
        out.append(" & ".join(latex_escape(c) for c in line) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [f"% {latex_escape(note)}" for note in grid.footnotes]
    return "\n".join(out) + "\n"


# -- CSV and JSON (tidy, one value per line) ---------------------------------------------------------
def _number(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else round(float(value), 6)


def table_json(result: TableResult) -> dict[str, Any]:
    table = result.table
    return {
        "table": table.id, "name": table.name, "paper": table.paper_title, "venue": table.venue,
        "title": table.title, "columns": list(result.columns),
        "rows": [{
            "label": r.row.label, "key": r.row.key, "status": r.status, "reference": r.row.reference,
            "certain": r.row.certain, "evidence": r.row.evidence, "extra": r.extra,
            "values": {c: {"ours": _number(r.ours.get(c)), "paper": _number(r.paper(c)), "delta": _number(r.delta(c))}
                       for c in result.columns},
            "runs": [str(run.run_dir) for run in r.runs], "notes": list(r.notes),
        } for r in result.rows],
        "not_in_table": [{"run": str(run.run_dir), "reason": reason} for run, reason in result.outsiders],
        "unreadable": list(result.problems), "setting_differences": list(result.setting_notes),
        "machine_differences": list(result.machine_notes),
        "devices": result.devices, "notes": result.footnotes(),
    }


def runs_json(records: Sequence[RunRecord], columns: Sequence[str], problems: Sequence[str] = ()) -> dict[str, Any]:
    return {"runs": [{"run": label, "path": str(run.path), "status": run.status, "error": run.error,
                      "metrics": {c: run.metrics.get(c) for c in columns}}
                     for label, run in zip(_differing_labels(records), records)],
            "unreadable": list(problems)}


def table_csv(result: TableResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "row", "label", "status", "certain", "metric", "ours", "paper", "delta", "runs"])
    for r in result.rows:
        for column in result.columns:
            writer.writerow([result.table.id, r.row.key, r.row.label, r.status,
                             "" if r.row.certain is None else str(r.row.certain).lower(), column,
                             "" if r.ours.get(column) is None else _number(r.ours.get(column)),
                             "" if r.paper(column) is None else _number(r.paper(column)),
                             "" if r.delta(column) is None else _number(r.delta(column)),
                             ";".join(str(run.run_dir) for run in r.runs)])
    return buffer.getvalue()


def runs_csv(records: Sequence[RunRecord], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "path", "status", "metric", "value"])
    for label, run in zip(_differing_labels(records), records):
        for column in columns:
            value = run.metrics.get(column)
            writer.writerow([label, str(run.path), run.status, column, "" if value is None else value])
    return buffer.getvalue()


def render(fmt: str, result: TableResult | None, records: Sequence[RunRecord], columns: Sequence[str],
           problems: Sequence[str] = (), width: int | None = None) -> str:
    """``result`` (a paper table) or, without one, the runs themselves in format ``fmt``."""
    if fmt == "json":
        payload = table_json(result) if result is not None else runs_json(records, columns, problems)
        return json.dumps(payload, indent=2) + "\n"
    if fmt == "csv":
        return table_csv(result) if result is not None else runs_csv(records, columns)
    grid = table_grid(result) if result is not None else runs_grid(records, columns, problems)
    if fmt == "markdown":
        return render_markdown(grid)
    if fmt == "latex":
        return render_latex(grid)
    return render_text(grid, width)


__all__ = ["FORMATS", "Grid", "METRIC_ORDER", "MISSING", "format_value", "render", "render_latex",
           "render_markdown", "render_text", "runs_columns", "runs_grid", "table_csv", "table_grid", "table_json"]

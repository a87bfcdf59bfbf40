"""A paper table filled with our runs: which run is which row, our numbers, the paper's, the delta.

A run counts as a row when it shares the row's whole setting (the task, the model's builder,
sites, depth and DCN, the upsampler and downsampler, and every key the table's rows set
differently: see :mod:`carafe_exp.analysis.experiment_jobs`). A run that matches no row is
listed as not belonging to the table, with the first setting that differs — except a run with
the table's whole setting and a resampler none of the rows has (a user's ``module:Class``, an
entry point, a newer built-in): it is an extra row below the paper's, labelled by its name,
with no paper numbers. Every row of the
paper is kept: a row without a run is a ``missing`` hole, a row whose runs failed a ``failed``
hole with the run's error, and a test-dev run (no public annotations) a ``server`` hole
pointing at the results file for the COCO evaluation server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carafe_exp.analysis.experiment_jobs import RowSetting, flatten, identity_keys, row_setting
from carafe_exp.analysis.paper_numbers import COMPLEXITY_COLUMNS, TABLE2_CHANNELS, TABLE2_SCALE, PaperRow, PaperTable
from carafe_exp.analysis.run_records import COMPLETED, FAILED, RunRecord
from carafe_exp.analysis.table_setting import difference_notes
from carafe_exp.errors import ConfigError, UserInputError

MISSING, REFERENCE, SERVER = "missing", "reference", "server"
# Differences from the paper's setting listed under a table, at most.
MAX_SETTING_NOTES = 8
_UNITS = {"k": 10**3, "M": 10**6, "G": 10**9}


@dataclass
class RowResult:
    """One paper row with what our runs measured for it."""

    row: PaperRow
    status: str
    ours: dict[str, float | str | None] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Not a row of the paper: our run of the table's setting with a resampler the paper does not have.
    extra: bool = False

    def paper(self, column: str) -> float | str | None:
        return self.row.value(column)

    def delta(self, column: str) -> float | str | None:
        """ours − paper for numbers; for the complexity columns whether ours rounds to the paper's text."""
        ours, theirs = self.ours.get(column), self.row.value(column)
        if ours is None or theirs is None:
            return None
        if isinstance(theirs, str):
            return "=" if ours == theirs else "≠"
        return float(ours) - float(theirs)


@dataclass
class TableResult:
    """A paper table with our runs placed in its rows."""

    table: PaperTable
    columns: list[str]
    rows: list[RowResult]
    outsiders: list[tuple[RunRecord, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    setting_notes: list[str] = field(default_factory=list)
    # How the runs' machines differed from the paper's (their metrics.json "setting_differences").
    machine_notes: list[str] = field(default_factory=list)

    @property
    def devices(self) -> list[str]:
        return sorted({run.device for row in self.rows for run in row.runs if run.device})

    def footnotes(self) -> list[str]:
        """Everything a reader needs beside the numbers: holes, outsiders, caveats, unreadable files."""
        notes = [f"{self.table.name} ({self.table.venue}): {self.table.title}."]
        notes += list(self.table.notes)
        if "fps" in self.columns:
            devices = ", ".join(self.devices) or "the device recorded in each run's metrics.json"
            notes.append(f"FPS: the paper's on one Titan XP GPU; ours on {devices} (batch 1, warm-up excluded): "
                         "compare rows with each other, not with the paper.")
        for result in self.rows:
            if result.row.certain is False:
                notes.append(f"Row {result.row.label!r} is inferred: {result.row.evidence}.")
            if result.extra:
                notes.append(f"Row {result.row.label!r} is not in the paper: the table's setting with "
                             f"{', '.join(result.row.job_overrides())}.")
            elif result.row.source and not result.row.reference:
                notes.append(f"Row {result.row.label!r}: published number from {result.row.source}.")
            for note in result.notes:
                notes.append(f"Row {result.row.label!r}: {note}")
        if self.machine_notes:
            notes.append("Our runs' machines differ from the paper's in: " + "; ".join(self.machine_notes) + ".")
        if self.setting_notes:
            notes.append("Our runs differ from the paper's setting in: " + "; ".join(self.setting_notes) + ".")
        # Runs left out for the same reason are one note (a sweep run off the paper's setting
        # would otherwise repeat the same sentence for every job).
        by_reason: dict[str, list[Path]] = {}
        for run, reason in self.outsiders:
            by_reason.setdefault(reason, []).append(Path(run.run_dir))
        for reason, dirs in by_reason.items():
            runs = f"{len(dirs)} runs" if len(dirs) > 1 else "1 run"
            notes.append(f"Not in this table ({runs}): {reason}: {_name_runs(dirs)}.")
        notes += [f"Unreadable: {problem}" for problem in self.problems]
        return notes


def _name_runs(dirs: list[Path]) -> str:
    """Sweep jobs as ``jobs 0, 1, 2 of <sweep dir>`` (their directories start ``<num>_``), others by path."""
    parents = {d.parent for d in dirs}
    numbers = [d.name.split("_", 1)[0] for d in dirs]
    if len(parents) == 1 and all(n.isdigit() for n in numbers):
        return f"job{'s' if len(dirs) > 1 else ''} {', '.join(numbers)} of {parents.pop()}"
    return ", ".join(str(d) for d in dirs)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _is_derived(key: str, derived: frozenset[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in derived for i in range(1, len(parts) + 1))


def _mismatches(run_flat: Mapping[str, Any], setting: RowSetting, keys: set[str]) -> list[str]:
    # Keys absent on either side are not compared: a run recorded before a config key existed
    # still belongs to its row.
    return sorted(key for key in keys if key in setting.values and key in run_flat
                  and not _same(run_flat[key], setting.values[key]))


def _job_matches(run: RunRecord, row: PaperRow) -> bool:
    """For records without a config (a run that failed before composing): compare the sweep overrides."""
    for override in row.job_overrides():
        key, _, value = override.partition("=")
        if run.override_value(key) != value:
            return False
    return True


def format_like(value: float, paper_text: str) -> str:
    """``value`` in the unit and precision of the paper's ``paper_text`` ("4.7M", "590k", "0")."""
    unit = paper_text[-1] if paper_text[-1] in _UNITS else ""
    number = paper_text[: len(paper_text) - len(unit)]
    decimals = len(number.split(".")[1]) if "." in number else 0
    scaled = value / _UNITS.get(unit, 1)
    return f"{scaled:.{decimals}f}{unit}" if value else "0"


def _complexity(setting: RowSetting, column: str, paper_text: str | None) -> str | None:
    from carafe_exp.analysis.complexity import upsampler_cost

    upsampler = {key.removeprefix("upsampler."): value for key, value in setting.values.items()
                 if key.startswith("upsampler.")}
    cost = upsampler_cost(upsampler, TABLE2_CHANNELS, TABLE2_SCALE)
    value = cost["flops" if column == "FLOPs" else "params"]
    return format_like(value, paper_text) if paper_text else f"{value:,.0f}"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _reason_order(key: str) -> tuple[int, str]:
    # Name the most telling difference first: another task, then another model, then its sites.
    for rank, prefix in enumerate(("task.name", "model._target_", "model.backbone.", "model.sites.")):
        if key.startswith(prefix):
            return rank, key
    return 4, key


def _outsider_reason(run_flat: Mapping[str, Any], settings: Mapping[str, RowSetting], keys: set[str],
                     rows: Sequence[PaperRow]) -> str:
    common = [key for key in sorted(keys, key=_reason_order)
              if len({repr(s.values.get(key)) for s in settings.values()}) == 1]
    first = next(iter(settings.values()))
    for key in common:
        if key in first.values and key in run_flat and not _same(run_flat[key], first.values[key]):
            return f"{key}={_describe(run_flat[key])}, the table's setting has {_describe(first.values[key])}"
    best = min(rows, key=lambda r: len(_mismatches(run_flat, settings[r.key], keys)))
    differs = _mismatches(run_flat, settings[best.key], keys)
    shown = ", ".join(f"{k}={_describe(run_flat[k])} (row: {_describe(settings[best.key].values[k])})"
                      for k in differs[:3])
    return f"matches no row; closest is {best.label!r}, which differs in {shown}"


RESAMPLER_KINDS = ("upsampler", "downsampler")


def _extra_resampler(run_flat: Mapping[str, Any], settings: Mapping[str, RowSetting], keys: set[str]) -> str | None:
    """``upsampler=<name>`` when the run has a row's whole setting but a resampler no row has, else None."""
    for kind in RESAMPLER_KINDS:
        name = run_flat.get(f"{kind}.name")
        if name is None or any(s.values.get(f"{kind}.name") == name for s in settings.values()):
            continue
        for setting in settings.values():
            differs = _mismatches(run_flat, setting, keys)
            if differs and all(key.startswith(f"{kind}.") for key in differs):
                return f"{kind}={name}"
    return None


def _extra_rows(extras: Mapping[str, list[RunRecord]], columns: Sequence[str]) -> list[RowResult]:
    results = []
    for override, runs in extras.items():
        kind, _, name = override.partition("=")
        row = PaperRow(label=name, values={}, job={kind: name})
        result = _row_result(row, runs, columns)
        result.extra = True
        config = next((r.config for r in runs if r.config), {})
        for column in columns:
            if column in COMPLEXITY_COLUMNS and kind == "upsampler" and isinstance(config.get(kind), Mapping):
                try:
                    cost = _resampler_cost(dict(config[kind]))
                except (UserInputError, ImportError) as error:  # the user's class is not importable here
                    result.notes.append(f"{column} not measured: {error}")
                    continue
                result.ours[column] = f"{cost['flops' if column == 'FLOPs' else 'params']:,.0f}"
        results.append(result)
    return results


def _resampler_cost(spec: dict[str, Any]) -> dict[str, float]:
    from carafe_exp.analysis.complexity import upsampler_cost

    return upsampler_cost(spec, TABLE2_CHANNELS, TABLE2_SCALE)


def _test_dev_results(run: RunRecord) -> list[Path]:
    return sorted((run.run_dir / "test-dev").glob("*.zip"))


def check_columns(table: PaperTable, wanted: Sequence[str] | None) -> list[str]:
    """The columns to show: ``wanted`` (each must be one of the table's) or all of them."""
    if not wanted:
        return list(table.columns)
    unknown = [c for c in wanted if c not in table.columns]
    if unknown:
        raise ConfigError(f"--metrics {' '.join(unknown)}: not a column of {table.id}; "
                          f"its columns are {' '.join(table.columns)}")
    return list(wanted)


def assemble_table(table: PaperTable, records: Sequence[RunRecord], columns: Sequence[str] | None = None,
                   problems: Sequence[str] = ()) -> TableResult:
    """Place ``records`` in the rows of ``table`` (see the module docstring)."""
    columns = check_columns(table, columns)
    run_rows = list(table.run_rows)
    settings = {row.key: row_setting(table.experiment, row.job_overrides()) for row in run_rows}
    keys = identity_keys(list(settings.values()))
    placed: dict[str, list[RunRecord]] = {row.key: [] for row in run_rows}
    outsiders: list[tuple[RunRecord, str]] = []
    extras: dict[str, list[RunRecord]] = {}
    differences: dict[str, tuple[Any, set[str], int]] = {}
    sample_data = 0
    for run in records:
        run_flat = flatten(run.config)
        if run_flat.get("trainer.fast_dev_run") not in (None, False, 0):
            # Lightning's fast_dev_run trains and tests on one batch: a smoke test, not a result.
            outsiders.append((run, "trainer.fast_dev_run (one batch): a smoke test, not a result"))
            continue
        if not run_flat:
            matched = [row for row in run_rows if _job_matches(run, row)]
        else:
            matched = [row for row in run_rows if not _mismatches(run_flat, settings[row.key], keys)]
        extra = None if matched or not run_flat else _extra_resampler(run_flat, settings, keys)
        if extra is not None:
            extras.setdefault(extra, []).append(run)
            continue
        if not matched:
            reason = (_outsider_reason(run_flat, settings, keys, run_rows) if run_flat
                      else "its record has no config and its overrides match no row")
            outsiders.append((run, reason))
            continue
        row = matched[0]
        placed[row.key].append(run)
        if run_flat.get("data.sample") not in (None, {}) or any(k.startswith("data.sample.") for k in run_flat):
            sample_data += 1
        setting = settings[row.key]
        for key, expected in setting.values.items():
            if key in keys or _is_derived(key, setting.derived) or key not in run_flat or key.startswith("task.data"):
                continue
            if not _same(run_flat[key], expected):
                _, seen, count = differences.get(key, (expected, set(), 0))
                seen.add(_describe(run_flat[key]))
                differences[key] = (expected, seen, count + 1)

    results = []
    for row in table.rows:
        if row.reference:
            results.append(RowResult(row, REFERENCE, notes=[f"quoted ({row.source})"] if row.source else []))
            continue
        result = _row_result(row, placed[row.key], columns)
        for column in columns:
            if column in COMPLEXITY_COLUMNS:
                paper_text = row.value(column)
                result.ours[column] = _complexity(settings[row.key], column, paper_text if isinstance(
                    paper_text, str) else None)
        results.append(result)
    results += _extra_rows(extras, columns)

    notes = [f"{key} {', '.join(sorted(seen))} in {count} run{'s' if count > 1 else ''} (paper's setting: "
             f"{_describe(expected)})" for key, (expected, seen, count) in sorted(differences.items())]
    if len(notes) > MAX_SETTING_NOTES:
        notes = notes[:MAX_SETTING_NOTES] + [f"{len(notes) - MAX_SETTING_NOTES} more keys"]
    if sample_data:
        notes.insert(0, f"generated sample data in {sample_data} run{'s' if sample_data > 1 else ''}")
    return TableResult(table, columns, results, outsiders, list(problems), notes, difference_notes(records))


def _row_result(row: PaperRow, runs: list[RunRecord], columns: Sequence[str]) -> RowResult:
    if not runs:
        return RowResult(row, MISSING, notes=["no run (missing)"])
    completed = [r for r in runs if r.status == COMPLETED]
    failed = [r for r in runs if r.status == FAILED]
    result = RowResult(row, COMPLETED if completed else FAILED, runs=list(runs))
    for run in failed:
        result.notes.append(f"failed: {run.error or 'no error recorded'} ({run.run_dir})")
    if len(completed) > 1:
        result.notes.append(f"mean of {len(completed)} runs")
    for column in columns:
        if column in COMPLEXITY_COLUMNS:
            continue
        values = [r.metrics[column] for r in completed if column in r.metrics]
        result.ours[column] = sum(values) / len(values) if values else None
    server = [r for r in completed if str(r.config.get("data", {}).get("test_split") or "").startswith("test")]
    if server and all(result.ours.get(c) is None for c in columns if c != "fps" and c not in COMPLEXITY_COLUMNS):
        result.status = SERVER
        files = [str(p) for r in server for p in _test_dev_results(r)]
        result.notes.append("test-dev AP comes from the COCO evaluation server; submit "
                            + (", ".join(files) if files else f"the zip files under {server[0].run_dir}/test-dev"))
    return result


__all__ = ["MISSING", "REFERENCE", "SERVER", "RowResult", "TableResult", "assemble_table", "check_columns",
           "format_like"]

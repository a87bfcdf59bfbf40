"""The papers' tables, read from the one data file ``paper_tables.yaml`` shipped in this package.

    from carafe_exp.analysis.paper_numbers import paper_table, paper_tables
    table = paper_table("carafe_pp/table3")
    table.rows[0].label, table.rows[0].value("bbox/AP")      # "Conv", 36.5

Every table of CARAFE (ICCV 2019, Tables 1-10) and CARAFE++ (TPAMI, Tables I-XIV) is there
with its rows in the paper's order, the printed numbers, the sweep values (``job``) that produce
each row and, for the tables whose check marks were lost in extraction, which rows are certain.
The file's header describes its fields.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from carafe_exp.errors import ConfigError

DATA_FILE = "paper_tables.yaml"
# Columns that are not run metrics: the module's cost at C=256, x2, measured on our modules.
COMPLEXITY_COLUMNS = ("FLOPs", "Params")
TABLE2_CHANNELS = 256
TABLE2_SCALE = 2


def format_override_value(value: Any) -> str:
    """A job value as Hydra's override grammar writes it (``null``, ``true``, ``16``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class PaperRow:
    """One printed row: its label, numbers, and the sweep values that produce it."""

    label: str
    values: Mapping[str, float | str | None]
    job: Mapping[str, Any] | None = None
    reference: bool = False
    source: str | None = None
    certain: bool | None = None
    evidence: str | None = None

    @property
    def key(self) -> str:
        """The row's name: its job as overrides (``upsampler=carafe``), or ``reference:<label>``."""
        return ",".join(self.job_overrides()) if self.job is not None else f"reference:{self.label}"

    def job_overrides(self) -> list[str]:
        """The row's job as Hydra overrides, e.g. ``["+row=carafe/table6/p"]``."""
        return [f"{k}={format_override_value(v)}" for k, v in (self.job or {}).items()]

    def value(self, column: str) -> float | str | None:
        return self.values.get(column)


@dataclass(frozen=True)
class PaperTable:
    """One table of one paper, as printed."""

    id: str
    paper: str
    paper_title: str
    venue: str
    number: str
    title: str
    task: str
    columns: tuple[str, ...]
    rows: tuple[PaperRow, ...]
    needs: str = ""
    notes: tuple[str, ...] = ()
    same_as: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``CARAFE Table 2`` / ``CARAFE++ Table III`` / ``Beyond the papers B1`` (not a CARAFE table)."""
        if self.paper == "beyond":
            return f"Beyond the papers {self.number}"
        return f"{'CARAFE++' if self.paper == 'carafe_pp' else 'CARAFE'} Table {self.number}"

    @property
    def experiment(self) -> str:
        """The experiment config that regenerates it (``carafe-exp -m experiment=<this>``)."""
        return self.id

    @property
    def run_rows(self) -> tuple[PaperRow, ...]:
        """Rows produced by a job of the sweep (quoted reference rows left out)."""
        return tuple(r for r in self.rows if not r.reference)

    def metric_columns(self) -> tuple[str, ...]:
        """Columns read from the runs' metrics (not the complexity columns)."""
        return tuple(c for c in self.columns if c not in COMPLEXITY_COLUMNS)


def _parse_row(table_id: str, columns: tuple[str, ...], raw: Mapping[str, Any]) -> PaperRow:
    values = raw.get("values")
    if not isinstance(values, list) or len(values) != len(columns):
        raise ConfigError(f"{DATA_FILE}: {table_id} row {raw.get('label')!r} has {len(values or [])} values for "
                          f"{len(columns)} columns {list(columns)}")
    reference = bool(raw.get("reference", False))
    job = raw.get("job")
    if reference == (job is not None):
        raise ConfigError(f"{DATA_FILE}: {table_id} row {raw.get('label')!r} needs either a job or reference: true")
    return PaperRow(label=str(raw["label"]), values=dict(zip(columns, values)),
                    job=dict(job) if job is not None else None, reference=reference, source=raw.get("source"),
                    certain=raw.get("certain"), evidence=raw.get("evidence"))


def _parse_table(table_id: str, raw: Mapping[str, Any], papers: Mapping[str, Any]) -> PaperTable:
    columns = tuple(raw["columns"])
    paper = papers[raw["paper"]]
    known = {"paper", "number", "title", "task", "columns", "rows", "needs", "notes", "same_as"}
    return PaperTable(
        id=table_id, paper=raw["paper"], paper_title=paper["title"], venue=paper["venue"], number=str(raw["number"]),
        title=str(raw["title"]), task=str(raw["task"]), columns=columns,
        rows=tuple(_parse_row(table_id, columns, row) for row in raw["rows"]),
        needs=" ".join(str(raw.get("needs", "")).split()), notes=tuple(" ".join(n.split()) for n in raw.get("notes", [])),
        same_as=raw.get("same_as"), extra={k: v for k, v in raw.items() if k not in known})


@functools.cache
def paper_tables() -> dict[str, PaperTable]:
    """Every table of both papers, keyed by id (``carafe/table2``, ``carafe_pp/table3``), in paper order."""
    text = resources.files("carafe_exp.analysis").joinpath(DATA_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return {table_id: _parse_table(table_id, raw, data["papers"]) for table_id, raw in data["tables"].items()}


def paper_table(table_id: str) -> PaperTable:
    """The table ``table_id``; a ConfigError naming the known ids otherwise."""
    tables = paper_tables()
    if table_id not in tables:
        raise ConfigError(f"unknown paper table {table_id!r}; known: {', '.join(tables)}")
    return tables[table_id]


@dataclass(frozen=True)
class PaperCost:
    """One row of CARAFE Table 2's FLOPs and Params columns (as printed: "4.7M", "590k")."""

    label: str
    registry_key: str
    flops: str
    params: str


def _table2_costs() -> tuple[PaperCost, ...]:
    table = paper_table("carafe/table2")
    return tuple(PaperCost(row.label, str(row.job["upsampler"]), str(row.value("FLOPs")), str(row.value("Params")))
                 for row in table.run_rows)


# CARAFE Table 2's complexity columns: FLOPs per input pixel of a x2 upsampling of a 256-channel
# map (a multiply-add is 2 FLOPs, biases counted: the paper's ref. [25]) and parameters.
TABLE2: tuple[PaperCost, ...] = _table2_costs()

# The CARAFE intro quotes two of these numbers more precisely ("H*W*199k FLOPs vs H*W*1180k of deconvolution").
INTRO_FLOPS = {"carafe": "199k", "deconv": "1180k"}

__all__ = ["COMPLEXITY_COLUMNS", "INTRO_FLOPS", "PaperCost", "PaperRow", "PaperTable", "TABLE2", "TABLE2_CHANNELS",
           "TABLE2_SCALE", "format_override_value", "paper_table", "paper_tables"]

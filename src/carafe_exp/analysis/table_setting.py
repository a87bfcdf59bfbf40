"""What a paper table's runs need beyond data, and how our runs' machines differed from the paper's.

Two readers for ``carafe-tables``:

- :func:`table_setting` reads a table's experiment config (``conf/experiment/<id>.yaml`` and the
  experiments it includes) for its ``/paper_setting`` (the paper's devices x batch and BatchNorm)
  and its ``pretrained_chain`` marker (the pretraining experiment whose sweep gives the weights),
  for ``carafe-tables --list``. It reads the YAML files rather than composing each experiment with
  Hydra, which would take most of a second per table.
- :func:`difference_notes` summarises the ``"setting_differences"`` the runs wrote to their
  metrics.json (see :mod:`carafe_exp.runs.setting_differences`), one note per key, for the notes
  under a table.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from carafe_exp.analysis.run_records import RunRecord
from carafe_exp.errors import ConfigError
from carafe_exp.paths import config_dir
from carafe_exp.runs.pretrained_chain import MARKER
from carafe_exp.runs.setting_differences import PaperMachine

PAPER_SETTING_GROUP = "paper_setting"


@dataclass(frozen=True)
class TableSetting:
    """A table's paper machine (None if its experiment names none) and the weights it needs first."""

    machine: PaperMachine | None
    pretrained: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``Paper's machine: ... Pretraining: run experiment=... first ...`` for the table index."""
        parts = []
        if self.machine is not None:
            parts.append(f"Paper's machine: {self.machine.describe()}")
        for key, provider in self.pretrained.items():
            parts.append(f"Pretraining: run experiment={provider} first, its sweep dir is {key}")
        return ". ".join(parts)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read it as YAML ({error})") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top")
    return loaded


def _experiment_parts(experiment: str, seen: frozenset[str] = frozenset()) -> tuple[str | None, dict[str, str]]:
    """(paper_setting choice, marker) of an experiment file, its included experiments first (later wins)."""
    if experiment in seen:
        raise ConfigError(f"experiment={experiment} includes itself")
    path = config_dir() / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment={experiment}: no such file {path}")
    raw = _read_yaml(path)
    machine: str | None = None
    marker: dict[str, str] = {}
    for entry in raw.get("defaults") or []:
        if isinstance(entry, str) and entry.startswith("/experiment/"):
            included_machine, included_marker = _experiment_parts(entry.removeprefix("/experiment/"),
                                                                  seen | {experiment})
            machine = included_machine or machine
            marker.update(included_marker)
        elif isinstance(entry, Mapping):
            for key, value in entry.items():
                if str(key).strip("/").removeprefix("override ").strip("/") == PAPER_SETTING_GROUP:
                    machine = str(value)
    marker.update({str(k): str(v) for k, v in (raw.get(MARKER) or {}).items()})
    return machine, marker


@functools.lru_cache(maxsize=None)
def paper_machine(name: str) -> PaperMachine:
    """One ``conf/paper_setting/<name>.yaml``."""
    path = config_dir() / PAPER_SETTING_GROUP / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"paper_setting={name}: no such file {path}")
    return PaperMachine.from_mapping(_read_yaml(path), where=f"{PAPER_SETTING_GROUP}/{name}")


def table_setting(experiment: str) -> TableSetting:
    """The paper machine and the pretraining experiments of ``experiment`` (see the module docstring)."""
    machine, marker = _experiment_parts(experiment)
    return TableSetting(paper_machine(machine) if machine else None, marker)


def _value(value: Any) -> str:
    return "null" if value is None else str(value)


def difference_notes(records: Iterable[RunRecord]) -> list[str]:
    """``total_batch: ours 2 in 3 runs (paper's 16)``, one per key the runs' machines differed in."""
    by_key: dict[str, tuple[str, set[str], int]] = {}
    order: list[str] = []
    for run in records:
        for item in run.data.get("setting_differences") or []:
            if not isinstance(item, Mapping) or "key" not in item:
                continue
            key = str(item["key"])
            if key not in by_key:
                order.append(key)
            paper, ours, count = by_key.get(key, (_value(item.get("paper")), set(), 0))
            ours.add(_value(item.get("ours")))
            by_key[key] = (paper, ours, count + 1)
    notes = []
    for key in order:
        paper, ours, count = by_key[key]
        notes.append(f"{key}: ours {' / '.join(sorted(ours))} in {count} run{'s' if count > 1 else ''} "
                     f"(paper's {paper})")
    return notes


def list_lines(table_ids: Sequence[str]) -> dict[str, str]:
    """``{table id: its setting's description}`` for the table index (tables without an experiment left out)."""
    lines = {}
    for table_id in table_ids:
        if (config_dir() / "experiment" / f"{table_id}.yaml").is_file():
            text = table_setting(table_id).describe()
            if text:
                lines[table_id] = text
    return lines


__all__ = ["TableSetting", "difference_notes", "list_lines", "paper_machine", "table_setting"]

"""The runs ``carafe-tables`` reads: every ``metrics.json`` under the given directories.

A record that cannot be read (not JSON, not an object, no ``metrics``) is reported with its
path and left out; a failed run (``"status": "failed"``) is kept, so its table row shows the
failure instead of disappearing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carafe_exp.runs.record import METRICS_FILE

COMPLETED, FAILED = "completed", "failed"


@dataclass(frozen=True)
class RunRecord:
    """One run's metrics.json."""

    path: Path
    data: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def status(self) -> str:
        """``completed`` or ``failed`` (records written before run status existed count as completed)."""
        return str(self.data.get("status") or COMPLETED)

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    @property
    def metrics(self) -> dict[str, float]:
        # A non-finite value is recorded as null (carafe_exp.runs.record): no number to show.
        return {name: value for name, value in (self.data.get("metrics") or {}).items() if value is not None}

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.data.get("config") or {})

    @property
    def overrides(self) -> list[str]:
        return [str(o) for o in self.data.get("overrides") or []]

    @property
    def task(self) -> str | None:
        return self.data.get("task")

    @property
    def device(self) -> str | None:
        """The device the run measured on, as a short text (metrics.json ``device``), if recorded."""
        device = self.data.get("device")
        if isinstance(device, dict):
            name = device.get("name") or device.get("kind") or device.get("accelerator")
            count = device.get("count")
            return f"{count} x {name}" if name and count and int(count) > 1 else (str(name) if name else None)
        return str(device) if device else None

    def override_value(self, key: str) -> str | None:
        """The value of ``key=...`` among the run's command-line overrides."""
        for override in self.overrides:
            name, sep, value = override.partition("=")
            if sep and name.lstrip("+~") == key.lstrip("+~"):
                return value
        return None


def find_metrics_files(paths: Sequence[str | Path]) -> list[Path]:
    """Every metrics.json under ``paths`` (files or directories), sorted; FileNotFoundError names a missing path."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(path.rglob(METRICS_FILE))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return sorted(found)


def read_run_record(path: Path) -> RunRecord:
    """Read one metrics.json; ValueError names the file and what is wrong with it."""
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable metrics.json ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: metrics.json must hold a JSON object, got {type(data).__name__}")
    metrics = data.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise ValueError(f"{path}: 'metrics' must be an object of name -> number")
    if metrics is None and data.get("status", COMPLETED) == COMPLETED:
        raise ValueError(f"{path}: has no 'metrics' (a completed run records its metrics)")
    for name, value in (metrics or {}).items():
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"{path}: metric {name!r} is {value!r}, not a number")
    return RunRecord(path, data)


def load_run_records(paths: Sequence[str | Path]) -> tuple[list[RunRecord], list[str]]:
    """The readable records under ``paths`` and one line per unreadable file (naming its path)."""
    records, problems = [], []
    for path in find_metrics_files(paths):
        try:
            records.append(read_run_record(path))
        except ValueError as error:
            problems.append(str(error))
    return records, problems


__all__ = ["COMPLETED", "FAILED", "RunRecord", "find_metrics_files", "load_run_records", "read_run_record"]

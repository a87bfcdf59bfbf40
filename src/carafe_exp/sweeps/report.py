"""The end of a sweep: how many jobs were run, skipped, resumed and failed, and where the failed records are.

A failed job does not stop a sweep: it writes its ``metrics.json`` with ``"status": "failed"``
and the one-line reason (``carafe_exp.cli``), and the next job starts. :class:`SweepReport`, a
Hydra callback (``conf/hydra/default.yaml``), runs in the launching process after the last job,
reads the records the sweep wrote, and leaves the outcome for the entry point, which reports it
and exits non-zero when any job failed. It reads files rather than in-process state so remote
launchers (SLURM) are covered too; a job killed before writing anything counts as failed.
A job's action (run, skipped, resumed, kept: :mod:`carafe_exp.runs.rerun`) comes from its
``.hydra/job_action.json``; diverged, interrupted and kept failed jobs count as failed (holes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from carafe_exp.runs.record import METRICS_FILE, STATUS_COMPLETED
from carafe_exp.runs.rerun import ACTION_RESUMED, ACTION_SKIPPED, read_action

# A job directory counts as this sweep's when written after the sweep started (minus clock slack).
_CLOCK_SLACK_S = 2.0


@dataclass
class SweepOutcome:
    """Jobs of one sweep: how many ran, and the failed ones as (job directory, one-line reason)."""

    sweep_dir: Path
    jobs: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: int = 0
    resumed: int = 0

    def summary(self) -> str:
        """``sweep <dir>: 3 jobs: 1 run, 1 skipped (completed before), 1 resumed, 0 failed``."""
        ran = self.jobs - self.skipped - self.resumed
        return (f"sweep {self.sweep_dir}: {self.jobs} jobs: {ran} run, {self.skipped} skipped (completed before), "
                f"{self.resumed} resumed, {len(self.failed)} failed")

    def message(self) -> str:
        """``2 of 5 jobs failed (...):`` then one indented ``<job dir>: <reason>`` line per failed job."""
        details = "".join(f"\n  {path}: {reason}" for path, reason in self.failed)
        return f"{len(self.failed)} of {self.jobs} jobs failed (each has its metrics.json with the reason):{details}"


_last_outcome: SweepOutcome | None = None


def last_outcome() -> SweepOutcome | None:
    """The outcome of the sweep this process launched last (None when none was launched)."""
    return _last_outcome


def collect_outcome(sweep_dir: Path, since: float = 0.0) -> SweepOutcome:
    """Read the job records in ``sweep_dir`` written after ``since`` (a time stamp)."""
    outcome = SweepOutcome(sweep_dir)
    for job_dir in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        record_path = job_dir / METRICS_FILE
        # Hydra rewrites a job's .hydra/ files each time it launches the job (a skipped job keeps its record).
        stamp = job_dir / ".hydra" / "overrides.yaml"
        stamp = stamp if stamp.exists() else job_dir / ".hydra"
        if stamp.stat().st_mtime < since - _CLOCK_SLACK_S:
            continue
        outcome.jobs += 1
        action = (read_action(job_dir) or {}).get("action")
        outcome.skipped += action == ACTION_SKIPPED
        outcome.resumed += action == ACTION_RESUMED
        if not record_path.exists():
            outcome.failed.append((job_dir, "no metrics.json: the job ended without a record"))
            continue
        try:
            record: dict[str, Any] = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            outcome.failed.append((job_dir, f"unreadable {METRICS_FILE}: {error}"))
            continue
        status = record.get("status", STATUS_COMPLETED)
        if status != STATUS_COMPLETED:
            outcome.failed.append((job_dir, str(record.get("error", status))))
    return outcome


class SweepReport(Callback):
    """Hydra callback: after a sweep, count its failed jobs (see the module docstring)."""

    def __init__(self) -> None:
        self._started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_outcome
        self._started = time.time()
        _last_outcome = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_outcome
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        _last_outcome = collect_outcome(sweep_dir, since=self._started)

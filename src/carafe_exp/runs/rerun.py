"""What a sweep job does when its directory already holds a record: the same command twice resumes a sweep.

A paper table is 3-9 jobs of 12-24 epochs; after a sweep stopped at job 6 (preempted, timed
out, cancelled), running the same ``carafe-exp -m ...`` command into the same
``hydra.sweep.dir`` used to train every job again. Now each job looks at its directory's
``metrics.json`` first (:func:`plan_job`), and ``rerun`` decides the rest:

==================  ===========================  =====================  ===============
previous record     ``rerun=null`` (default)     ``rerun=failed``       ``rerun=all``
==================  ===========================  =====================  ===============
none                run                          run                    run
completed           skipped                      skipped                run again
interrupted         resumed from ``last.ckpt``   resumed                run again
diverged / failed   kept (a hole), not run       run again              run again
==================  ===========================  =====================  ===============

A record whose config differs from the job's (another value of any setting, ``rerun`` aside)
is not the job's result: the job runs again and the old record is kept beside it as
``metrics.attempt<N>.json``. An interrupted job that had not written a checkpoint yet starts
over. A job run again starts from scratch (its ``last.ckpt`` is overwritten at the first save).

Each job writes what it did to ``.hydra/job_action.json`` (Hydra rewrites that directory
whenever it launches the job), and the end-of-sweep report counts them
(:mod:`carafe_exp.sweeps.report`). The same logic makes a SLURM requeue resume: the requeued
job finds its ``interrupted`` record. Single runs (no ``-m``) are unaffected: they resume with
``ckpt_path=last``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carafe_exp.errors import ConfigError
from carafe_exp.runs.record import (METRICS_FILE, STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED,
                                    STATUS_INTERRUPTED, read_record, without_non_finite, write_json_atomic)

RERUN_CHOICES = (None, "failed", "all")
# Keys of the config that say how to launch, not what to run.
IGNORED_KEYS = ("rerun",)
ACTION_FILE = Path(".hydra") / "job_action.json"

ACTION_RUN = "run"
ACTION_SKIPPED = "skipped"
ACTION_RESUMED = "resumed"
ACTION_KEPT = "kept"  # a diverged or failed record left as it is


@dataclass(frozen=True)
class JobPlan:
    """What a sweep job does: ``action``, why, the previous record, and the checkpoint it resumes."""

    action: str
    reason: str
    record: dict[str, Any] | None = None
    checkpoint: Path | None = None


def check_rerun(value: Any) -> str | None:
    """``rerun`` as given, or a ConfigError naming the choices."""
    if value not in RERUN_CHOICES:
        raise ConfigError(f"rerun={value} is not one of null, failed, all (what a re-run sweep does again)")
    return value


def _comparable(config: dict[str, Any]) -> Any:
    plain, _ = without_non_finite({k: v for k, v in config.items() if k not in IGNORED_KEYS})
    return json.loads(json.dumps(plain, default=str, sort_keys=True))


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (both compared as JSON would hold them)."""
    old, new = _comparable(old) if not prefix else old, _comparable(new) if not prefix else new
    keys = sorted(set(old) | set(new))
    changed: list[str] = []
    for key in keys:
        where = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_differences(a, b, f"{where}.")
        elif a != b:
            changed.append(where)
    return changed


def plan_job(output_dir: Path, config: dict[str, Any], rerun: str | None) -> JobPlan:
    """Decide from ``output_dir/metrics.json`` what this sweep job does (see the module docstring)."""
    path = output_dir / METRICS_FILE
    if not path.is_file():
        return JobPlan(ACTION_RUN, "no previous record")
    try:
        record = read_record(path)
    except (OSError, ValueError) as error:
        return JobPlan(ACTION_RUN, f"the previous {METRICS_FILE} is unreadable ({error})")
    status = record.get("status", STATUS_COMPLETED)
    if rerun == "all":
        return JobPlan(ACTION_RUN, f"rerun=all (previous record: {status})", record)
    changed = config_differences(dict(record.get("config") or {}), config)
    if status == STATUS_FAILED:
        # A job that failed before the run loop started recorded no run name.
        changed = [key for key in changed if key != "name"]
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        return JobPlan(ACTION_RUN, f"the config changed since its {status} record ({shown})", record)
    if status == STATUS_COMPLETED:
        return JobPlan(ACTION_SKIPPED, "completed with the same config", record)
    if status == STATUS_INTERRUPTED:
        checkpoint = output_dir / "checkpoints" / "last.ckpt"
        if checkpoint.is_file():
            return JobPlan(ACTION_RESUMED, "interrupted; resuming from its last checkpoint", record, checkpoint)
        return JobPlan(ACTION_RUN, "interrupted before its first checkpoint", record)
    if status in (STATUS_DIVERGED, STATUS_FAILED):
        if rerun == "failed":
            return JobPlan(ACTION_RUN, f"rerun=failed (previous record: {status})", record)
        return JobPlan(ACTION_KEPT, f"{status} before; rerun=failed runs it again", record)
    return JobPlan(ACTION_RUN, f"previous record has status {status!r}", record)


def write_action(output_dir: Path, plan: JobPlan) -> None:
    """Leave the job's action where the end-of-sweep report reads it."""
    write_json_atomic(output_dir / ACTION_FILE, {"action": plan.action, "reason": plan.reason})


def read_action(job_dir: Path) -> dict[str, Any] | None:
    """The action a sweep job recorded, or None (a job that ended before deciding)."""
    try:
        return json.loads((job_dir / ACTION_FILE).read_text())
    except (OSError, ValueError):
        return None

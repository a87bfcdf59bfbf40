"""The record of one run, ``metrics.json``: what ran, on what, what it measured, and whether it finished.

Shape (DESIGN.md): ``{"task", "overrides", "metrics", "config", "versions", "wall_time_s",
"throughput", "status", "device", ...}``. ``status`` is one of:

- ``"completed"``: training (if any) reached its end and the final weights were evaluated;
- ``"failed"``: with ``"error"``, its one-line reason;
- ``"interrupted"``: a signal stopped it (``"interruption"``: signal, epoch, global step and the
  checkpoint saved at that step, which a re-run of the sweep resumes);
- ``"diverged"``: a non-finite training loss stopped it (``"divergence"``: step, loss term, the
  last finite checkpoint).

A paper table's run also carries ``"setting_differences"``, how its machine differs from the
paper's (``carafe_exp.runs.setting_differences``).

Every status but ``"completed"`` is a hole in ``carafe-tables``. The file is strict JSON (RFC 8259,
which ``jq`` and JavaScript read): a NaN or infinite value is written as ``null`` and its place
named in ``"non_finite"`` (``["metrics.loss"]``), never as the ``NaN`` token Python would write.

Written atomically (a temporary file in the same directory, then ``os.replace``) so a reader
never sees half a file, even if the run is killed while writing, and with the mode of the
other outputs (0644 under the usual umask). A run that writes into a directory which already holds a ``metrics.json`` (a
resumed or re-evaluated run) first moves the old one aside as ``metrics.attempt<N>.json``:
only ``metrics.json`` is the result, and no attempt is lost.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import carafe_exp

METRICS_FILE = "metrics.json"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
STATUS_DIVERGED = "diverged"
STATUSES = (STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_DIVERGED)
_ATTEMPT = re.compile(r"^metrics\.attempt(\d+)\.json$")


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the source checkout the package runs from; nulls outside git.

    The package must itself be tracked by the repository: an installed copy inside some other
    repository's tree (a virtual environment in a checkout) is not that repository's code.
    """
    package_dir = Path(__file__).resolve().parent
    unknown: dict[str, Any] = {"commit": None, "dirty": None}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True,
                                  timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", Path(__file__).name) is None:
        return unknown
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    if commit is None:
        return unknown
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def library_versions() -> dict[str, Any]:
    """Versions of the code and libraries that decide a run's numbers, with the git commit of this code."""
    torch = sys.modules.get("torch")
    git = git_state()
    return {
        "carafe_exp": carafe_exp.__version__,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "python": platform.python_version(),
        "torch": _distribution_version("torch"),
        "torchvision": _distribution_version("torchvision"),
        "lightning": _distribution_version("lightning"),
        "hydra": _distribution_version("hydra-core"),
        "cuda": getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None,
        "platform": platform.platform(),
    }


def cpu_name() -> str:
    """The CPU model as the kernel reports it (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_description(accelerator: str, count: int) -> dict[str, Any]:
    """``{"accelerator", "name", "count"}``: the kind of device a run used, its model name, how many."""
    accelerator = "cuda" if accelerator in ("gpu", "cuda") else accelerator
    name = cpu_name()
    if accelerator == "cuda":
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CUDA device (none visible)"
    return {"accelerator": accelerator, "name": name, "count": int(count)}


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file in this process: 0666 less the umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def without_non_finite(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` with every NaN/inf float replaced by ``None``, and the dotted places replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where]
    if isinstance(value, Mapping):
        clean: dict[Any, Any] = {}
        places: list[str] = []
        for key, item in value.items():
            clean[key], found = without_non_finite(item, f"{where}.{key}" if where else str(key))
            places += found
        return clean, places
    if isinstance(value, (list, tuple)):
        items = [without_non_finite(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return [item for item, _ in items], [place for _, found in items for place in found]
    return value, []


def write_json_atomic(path: str | os.PathLike[str], payload: Mapping[str, Any], mode: int | None = None) -> Path:
    """Write ``payload`` as strict JSON to ``path`` atomically, with ``mode`` (default: that of any new file).

    A non-finite float is written as ``null`` (see the module docstring); :func:`build_record`
    also names where.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload, _ = without_non_finite(payload)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=str, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; the record is an output like any other.
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def previous_attempts(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``metrics.attempt<N>.json`` files of a run directory, oldest first."""
    found = [(int(match.group(1)), p) for p in Path(output_dir).glob("metrics.attempt*.json")
             if (match := _ATTEMPT.match(p.name))]
    return [p for _, p in sorted(found)]


def write_record(output_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write ``record`` as the run's metrics.json; an existing one is kept as ``metrics.attempt<N>.json``."""
    output_dir = Path(output_dir)
    current = output_dir / METRICS_FILE
    if current.exists():
        attempts = previous_attempts(output_dir)
        number = int(_ATTEMPT.match(attempts[-1].name).group(1)) + 1 if attempts else 1  # type: ignore[union-attr]
        os.replace(current, output_dir / f"metrics.attempt{number}.json")
    return write_json_atomic(current, record)


def build_record(*, task: str, overrides: list[str], metrics: Mapping[str, float], config: Mapping[str, Any],
                 wall_time_s: float, throughput: Mapping[str, float], status: str = STATUS_COMPLETED,
                 error: str | None = None, device: Mapping[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
    """The metrics.json payload in the shape DESIGN.md fixes; ``extra`` adds optional fields (checkpoint, wandb).

    Non-finite numbers anywhere in it become ``null`` and are listed under ``"non_finite"``.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    record: dict[str, Any] = {
        "task": task,
        "status": status,
        "overrides": list(overrides),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "config": dict(config),
        "versions": library_versions(),
        "device": dict(device) if device is not None else None,
        "wall_time_s": float(wall_time_s),
        "throughput": {k: float(v) for k, v in throughput.items()},
    }
    if status != STATUS_COMPLETED:
        # The one line carafe-tables shows for the hole ("diverged at step 5 (train/loss = nan)").
        record["error"] = error or ("unknown error" if status == STATUS_FAILED else status)
    record.update({k: v for k, v in extra.items() if v is not None})
    record, non_finite = without_non_finite(record)
    if non_finite:
        record["non_finite"] = non_finite
    return record


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one metrics.json."""
    with open(path) as handle:
        return json.load(handle)

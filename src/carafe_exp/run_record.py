"""The record of one run, ``metrics.json``: what ran, what it measured, with which versions.

Written atomically (a temporary file in the same directory, then ``os.replace``) so a reader
such as ``carafe-tables`` never sees half a file, even if the run is killed while writing.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide a run's numbers."""
    import hydra
    import lightning
    import torch
    import torchvision

    import carafe_exp

    return {
        "carafe_exp": carafe_exp.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "hydra": hydra.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }


def write_json_atomic(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def build_record(*, task: str, overrides: list[str], metrics: Mapping[str, float], config: Mapping[str, Any],
                 wall_time_s: float, throughput: Mapping[str, float]) -> dict[str, Any]:
    """The metrics.json payload in the shape DESIGN.md fixes."""
    return {
        "task": task,
        "overrides": list(overrides),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "config": dict(config),
        "versions": library_versions(),
        "wall_time_s": float(wall_time_s),
        "throughput": {k: float(v) for k, v in throughput.items()},
    }


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one metrics.json."""
    with open(path) as handle:
        return json.load(handle)

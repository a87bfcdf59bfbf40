"""Generate a sample dataset once, atomically, so concurrent processes never see half a dataset.

Writers produce a dataset in the real on-disk format (COCO, ImageFolder, ...) into a temporary
sibling directory; it is renamed into place only when complete, with a stamp file recording the
generator parameters. DDP ranks and pytest workers that race here all end up reading the same,
complete dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAMP_NAME = ".carafe_exp_sample.json"


def default_cache_dir() -> Path:
    """Where generated samples live: ``$CARAFE_EXP_CACHE`` or ``~/.cache/carafe-exp``."""
    return Path(os.environ.get("CARAFE_EXP_CACHE", Path.home() / ".cache" / "carafe-exp"))


def _stamp_matches(root: Path, params: Mapping[str, Any]) -> bool:
    stamp = root / STAMP_NAME
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()) == json.loads(json.dumps(dict(params), sort_keys=True))
    except (OSError, json.JSONDecodeError):
        return False


def ensure_sample(root: str | os.PathLike[str], writer: Callable[..., None], params: Mapping[str, Any]) -> Path:
    """Make sure ``root`` holds the sample that ``writer(directory, **params)`` generates.

    Regenerates when the stamp is missing or its parameters differ; a finished sample is reused.
    """
    root = Path(root).expanduser()
    if _stamp_matches(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        log.info("generating sample dataset in %s", root)
        writer(staging, **params)
        (staging / STAMP_NAME).write_text(json.dumps(dict(params), sort_keys=True))
        if _stamp_matches(root, params):  # another process finished first
            return root
        if root.exists():
            # A stale or different sample: move it aside first so the rename below is atomic.
            trash = root.parent / f".{root.name}.old.{os.getpid()}.{time.time_ns()}"
            try:
                root.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            except FileNotFoundError:
                pass
        try:
            staging.rename(root)
        except OSError:
            if not _stamp_matches(root, params):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root

"""Generate a sample dataset once, atomically, so concurrent processes never see half a dataset.

Writers produce a dataset in the real on-disk format (COCO, ImageFolder, ...) into a temporary
sibling directory; it is renamed into place only when complete, with a stamp file recording the
generator parameters. DDP ranks and pytest workers that race here all end up reading the same,
complete dataset.

A finished sample is never replaced: another process may be reading it (two jobs of one sweep
with different ``data.sample`` values, two test workers). A sample with other parameters goes
into a sibling directory named by a digest of those parameters, and ``ensure_sample`` returns
the directory that holds the requested sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
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
        return json.loads(stamp.read_text()) == json.loads(_canonical(params))
    except (OSError, json.JSONDecodeError):
        return False


def _canonical(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True)


def variant_dir(root: Path, params: Mapping[str, Any]) -> Path:
    """The sibling of ``root`` that holds the sample generated with ``params`` when ``root`` holds another."""
    digest = hashlib.sha1(_canonical(params).encode()).hexdigest()[:10]
    return root.parent / f"{root.name}-{digest}"


def ensure_sample(root: str | os.PathLike[str], writer: Callable[..., None], params: Mapping[str, Any]) -> Path:
    """Make sure a sample that ``writer(directory, **params)`` generates exists; return its directory.

    That is ``root`` when ``root`` is free or already holds these parameters, and
    :func:`variant_dir` otherwise; a finished sample is reused, never overwritten.
    """
    root = Path(root).expanduser()
    if _stamp_matches(root, params):
        return root
    if root.exists():
        variant = variant_dir(root, params)
        log.info("%s holds a sample with other parameters; using %s", root, variant)
        return _generate(variant, writer, params)
    return _generate(root, writer, params)


def _generate(root: Path, writer: Callable[..., None], params: Mapping[str, Any]) -> Path:
    """Generate into a staging directory and rename it to ``root``; the first finished process wins."""
    if _stamp_matches(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        log.info("generating sample dataset in %s", root)
        writer(staging, **params)
        (staging / STAMP_NAME).write_text(_canonical(params))
        try:
            staging.rename(root)
        except OSError:
            # Another process renamed its sample into place first (rename onto a non-empty
            # directory fails); use it when it holds these parameters.
            if _stamp_matches(root, params):
                return root
            if root.exists():
                return ensure_sample(root, writer, params)
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root

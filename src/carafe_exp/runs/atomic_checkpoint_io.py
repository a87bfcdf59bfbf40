"""Checkpoint files written whole or not at all, and a write that fails as one line.

Lightning's own writer truncates the target and then writes it, so a process killed while
saving (a second SIGTERM, SLURM's SIGKILL after the grace time, a full disk) left a
``last.ckpt`` that no longer loads, and the run's only way to resume was gone. Here the
checkpoint is serialised in memory first (so its size is known), written to a temporary file
beside the target, flushed to disk, and only then renamed over the target (``os.replace`` is
atomic on POSIX file systems): the previous checkpoint stays valid until the new one is complete.

A write that fails (read-only or missing directory, full disk, quota, file-size limit) raises
:class:`carafe_exp.errors.OutputError` naming the path and the bytes needed; the CLI prints it
as one line.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from carafe_exp.errors import OutputError


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def write_bytes_atomic(path: Path, payload: bytes | memoryview, what: str = "checkpoint") -> None:
    """Write ``payload`` to ``path`` through a temporary file and ``os.replace``; OSError -> OutputError."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        reason = error.strerror or str(error)
        kept = " (the previous file is unchanged)" if path.exists() else ""
        raise OutputError(f"cannot write the {what} {path} ({_megabytes(memoryview(payload).nbytes)} needed): "
                          f"{reason}{kept}") from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``CheckpointIO`` for local paths, writing atomically (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        # The buffer is written as it is (no copy: a detection checkpoint is a third of a gigabyte).
        write_bytes_atomic(Path(path), buffer.getbuffer())

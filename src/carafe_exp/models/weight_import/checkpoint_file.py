"""Reading a checkpoint file once, whatever wrote it.

Format modules ask "is this file mine?" one after another; each question reads the file through
:func:`read_checkpoint`, which keeps the last file read so a large checkpoint is unpickled once.
The user names the file explicitly (``model.weights=``), as with Lightning's ``ckpt_path``, so it is
unpickled in full: mmdetection and Lightning checkpoints carry metadata objects beside the tensors.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from carafe_exp.errors import ConfigError

_last: tuple[tuple[str, float, int], Any] | None = None


def read_checkpoint(path: Path) -> Any:
    """The unpickled contents of ``path`` (on the CPU); an unreadable file is a ConfigError."""
    global _last
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime, stat.st_size)
    if _last is not None and _last[0] == key:
        return _last[1]
    try:
        contents = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ModuleNotFoundError, AttributeError) as error:
        reason = " ".join(str(error).split())[:300]
        raise ConfigError(f"{path} is not a readable PyTorch checkpoint: {reason}") from None
    _last = (key, contents)
    return contents


def tensors_of(contents: Any) -> dict[str, torch.Tensor] | None:
    """The state dict inside ``contents``: itself, or under ``state_dict`` / ``model``; else None."""
    for candidate in (contents, *(contents.get(k) for k in ("state_dict", "model") if isinstance(contents, dict))):
        if isinstance(candidate, dict) and candidate and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items()):
            return dict(candidate)
    return None

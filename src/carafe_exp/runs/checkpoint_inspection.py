"""What a checkpoint given as ``ckpt_path`` is: where it is, whether it fits the model, whether training ended.

Read before Lightning sees the file, so that a wrong file, a checkpoint of another model or a
finished run is one clear line (or a clear decision) rather than a ``state_dict`` traceback.
Checkpoints written by ``carafe-exp`` carry a description of the model they hold
(:data:`DESCRIPTION_KEY`, added by :class:`carafe_exp.runs.callbacks.RunIdentity`).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carafe_exp.errors import ConfigError

DESCRIPTION_KEY = "carafe_exp"


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """``last`` means this run directory's last.ckpt; a run directory means its checkpoints/last.ckpt."""
    if ckpt_path in (None, "", "null", "None"):
        return None
    if ckpt_path == "last":
        candidate = output_dir / "checkpoints" / "last.ckpt"
        if not candidate.is_file():
            raise ConfigError(
                f"ckpt_path=last: no checkpoint at {candidate}; resume a run by giving its directory, "
                f"e.g. hydra.run.dir=<run dir> ckpt_path=last, or ckpt_path=<run dir or .ckpt file>")
        return candidate
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no checkpoint file at {path}")
    return path


def describe_model(description: Mapping[str, Any] | None) -> str:
    """``detection faster_rcnn (depth 50), upsampler carafe at fpn, downsampler conv`` from a run description."""
    if not description:
        return "an unknown model"
    parts = [f"{description.get('task', '?')} {description.get('model', '?')}"]
    if description.get("depth") is not None:
        parts[0] += f" (depth {description['depth']})"
    for kind in ("upsampler", "downsampler"):
        if description.get(kind):
            sites = description.get(f"{kind}_sites") or []
            parts.append(f"{kind} {description[kind]}" + (f" at {', '.join(sites)}" if sites else ""))
    return ", ".join(parts)


@dataclass
class CheckpointFile:
    """A checkpoint on disk, read on the CPU (memory-mapped where the format allows)."""

    path: Path
    content: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> CheckpointFile:
        """Load ``path``; a file that is not a Lightning checkpoint raises one ``ConfigError`` line."""
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as handle:
                head = handle.read(1)
            if head != b"\x80":  # torch writes zip archives, or pickles in its legacy format
                raise ConfigError(f"ckpt_path={path} is not a checkpoint file (neither a torch zip archive nor a "
                                  "pickle); give a .ckpt written by carafe-exp or a run directory")
        try:
            try:
                content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                content = torch.load(path, map_location="cpu", weights_only=True)  # the legacy format
        except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError,
                AttributeError, ModuleNotFoundError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"ckpt_path={path} is not a checkpoint file torch can read ({reason[:160]}); "
                              "give a .ckpt written by carafe-exp or a run directory") from None
        if not isinstance(content, dict) or not isinstance(content.get("state_dict"), Mapping):
            raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (no 'state_dict'); for backbone "
                              "weights use model.backbone.weights=<file> instead")
        return cls(path, content)

    @property
    def description(self) -> dict[str, Any] | None:
        """The model description written by carafe-exp, if any."""
        found = self.content.get(DESCRIPTION_KEY)
        return dict(found) if isinstance(found, Mapping) else None

    @property
    def epoch(self) -> int:
        return int(self.content.get("epoch", 0))

    @property
    def global_step(self) -> int:
        return int(self.content.get("global_step", 0))

    def completed_epochs(self) -> int:
        """Training epochs whose batches all ran (a checkpoint from an epoch's end counts that epoch)."""
        fit_loop = (self.content.get("loops") or {}).get("fit_loop") or {}
        progress = (fit_loop.get("epoch_progress") or {}).get("current") or {}
        if "processed" in progress:
            return int(progress["processed"])
        batches = fit_loop.get("epoch_loop.batch_progress") or {}
        return self.epoch + 1 if batches.get("is_last_batch") else self.epoch

    def training_finished(self, max_epochs: int | None, max_steps: int | None) -> bool:
        """Whether fitting from this checkpoint with these limits would train nothing more."""
        if max_steps is not None and max_steps > 0 and self.global_step >= max_steps:
            return True
        return max_epochs is not None and max_epochs >= 0 and self.completed_epochs() >= max_epochs

    def check_fits(self, module: nn.Module, built: Mapping[str, Any] | None) -> None:
        """The checkpoint's weights have the names and shapes of ``module``'s, or one line says what differs."""
        expected = module.state_dict()
        held = self.content["state_dict"]
        missing = [k for k in expected if k not in held]
        unexpected = [k for k in held if k not in expected]
        mismatched = [k for k in expected if k in held and hasattr(held[k], "shape")
                      and tuple(held[k].shape) != tuple(expected[k].shape)]
        if not (missing or unexpected or mismatched):
            return
        problems = []
        if missing:
            problems.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            key = mismatched[0]
            problems.append(f"{len(mismatched)} of another shape (e.g. {key}: {tuple(held[key].shape)} in the "
                            f"checkpoint, {tuple(expected[key].shape)} built)")
        raise ConfigError(f"ckpt_path={self.path} holds {describe_model(self.description)} but this run built "
                          f"{describe_model(built)}: {'; '.join(problems)}. Give the overrides of the run that "
                          f"wrote it, or its run directory as ckpt_path")

    def summary(self) -> dict[str, Any]:
        """Where the weights came from, for metrics.json."""
        return {"path": str(self.path), "epoch": self.epoch, "global_step": self.global_step}

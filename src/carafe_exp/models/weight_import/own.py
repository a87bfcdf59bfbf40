"""Our own runs and checkpoints as ``model.weights``.

- a run directory (``checkpoints/last.ckpt`` inside), or a Lightning ``.ckpt`` it wrote: the task's
  ``model.*`` tensors. Tensors of the task that are not the model (the inpainting discriminator,
  metric states) are knowingly left out: ``model.weights`` sets the network being evaluated;
- a plain state dict of the model (``torch.save(model.state_dict())``), also under ``state_dict``.

Asked last: reference formats recognise their own files first.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from carafe_exp.models.run_checkpoint import CHECKPOINT
from carafe_exp.models.weight_import.checkpoint_file import read_checkpoint, tensors_of
from carafe_exp.models.weight_import.converted import ConvertedWeights

DESCRIPTION = "a carafe-exp run directory, its .ckpt, or a state dict of the model"
PRIORITY = 1000
_TASK_PREFIX = "model."


def _file(source: Path) -> Path:
    return source / CHECKPOINT if source.is_dir() else source


def recognise(source: Path) -> bool:
    if source.is_dir():
        return (source / CHECKPOINT).is_file()
    return tensors_of(read_checkpoint(source)) is not None


def convert(source: Path, model: nn.Module) -> ConvertedWeights:
    file = _file(source)
    contents = read_checkpoint(file)
    tensors = tensors_of(contents) or {}
    lightning = isinstance(contents, dict) and "pytorch-lightning_version" in contents
    if not lightning:
        return ConvertedWeights(tensors, f"a state dict ({file})")
    ours = {k[len(_TASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(_TASK_PREFIX)}
    others = sorted({k.split(".", 1)[0] for k in tensors if not k.startswith(_TASK_PREFIX)})
    ignored = {f"{name}.*": "part of the training task, not of the model" for name in others}
    return ConvertedWeights(ours, f"a carafe-exp checkpoint ({file})", ignored)

"""Recognise the format of ``model.weights`` and load it into a built model.

Each module of this package that defines ``recognise`` and ``convert`` is a format:

- ``DESCRIPTION: str`` what it reads, for messages (``"an mmdetection checkpoint"``);
- ``PRIORITY: int`` the order in which formats are asked (lower first; specific before generic);
- ``recognise(source: Path) -> bool`` whether the file or directory is of this format;
- ``convert(source: Path, model: nn.Module) -> ConvertedWeights`` its tensors under our names (a
  format that does not apply to this kind of model raises a ConfigError saying which models it fits).

Formats are found by listing the package, so adding one is adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.weight_import.converted import load_strictly

KEY = "model.weights"


def weight_formats() -> list[ModuleType]:
    """Every format module of this package, in the order they are asked."""
    package = importlib.import_module(__package__)
    formats = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{__package__}.{info.name}")
        if callable(getattr(module, "recognise", None)) and callable(getattr(module, "convert", None)):
            formats.append(module)
    return sorted(formats, key=lambda module: (getattr(module, "PRIORITY", 100), module.__name__))


def load_model_weights(model: nn.Module, source: str | Path) -> str:
    """Load the whole ``model`` from ``source`` (file or directory); returns what the source was."""
    path = Path(source).expanduser()
    origin = f"{KEY}={source}"
    if not path.exists():
        raise ConfigError(f"{origin}: no such file or directory")
    for module in weight_formats():
        if module.recognise(path):
            weights = module.convert(path, model)
            load_strictly(model, weights, origin)
            return weights.source
    known = "; ".join(module.DESCRIPTION for module in weight_formats())
    raise ConfigError(f"{origin}: not a checkpoint format carafe-exp reads (it reads {known})")

"""Resamplers defined outside carafe_exp: an import path ``module:Class`` or an installed entry point.

A researcher's own upsampler needs no edit of this package:

- ``upsampler.name=my_pkg.my_module:MyUp`` imports ``my_pkg.my_module`` (on ``sys.path``) and
  uses its attribute ``MyUp``;
- an installed distribution that declares ``[project.entry-points."carafe_exp.upsamplers"]
  my_up = "my_pkg.my_module:MyUp"`` (or ``carafe_exp.downsamplers``) makes ``upsampler=my_up``
  work by name after ``pip install``.

Every failure is one line naming the config key and what is wrong, so a typo does not end in a
traceback from inside importlib.
"""

from __future__ import annotations

import importlib
import inspect
from importlib import metadata

from torch import nn

from carafe_exp.errors import ConfigError

# The Python entry-point group of each kind of resampler (the registry's `kind`).
ENTRY_POINT_GROUPS = {"upsampler": "carafe_exp.upsamplers", "downsampler": "carafe_exp.downsamplers"}


def is_import_path(name: str) -> bool:
    """Whether ``name`` is written ``module:Class`` (the form that names a class outside the registry)."""
    module, sep, attribute = name.partition(":")
    return bool(sep and module and attribute)


def entry_point_names(kind: str) -> list[str]:
    """Names that installed distributions register for ``kind`` (``upsampler``/``downsampler``)."""
    return sorted({entry.name for entry in metadata.entry_points(group=ENTRY_POINT_GROUPS[kind])})


def _checked_class(kind: str, name: str, value: object, origin: str) -> type[nn.Module]:
    if not (inspect.isclass(value) and issubclass(value, nn.Module)):
        raise ConfigError(f"{kind}={name}: {origin} is {type(value).__name__} {value!r}, not an nn.Module class")
    return value


def import_class(kind: str, name: str) -> type[nn.Module]:
    """The class named ``module:Class`` (dotted attributes allowed), or a one-line ConfigError."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{kind}={name}: module {module_name!r} does not import ({error}); is it on the "
                          f"Python path (PYTHONPATH) or installed?") from error
    value: object = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"{kind}={name}: module {module_name!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    return _checked_class(kind, name, value, f"{module_name}:{attribute}")


def entry_point_class(kind: str, name: str) -> type[nn.Module] | None:
    """The class an installed entry point registers as ``name`` for ``kind``, None when there is none."""
    matches = [entry for entry in metadata.entry_points(group=ENTRY_POINT_GROUPS[kind]) if entry.name == name]
    if not matches:
        return None
    values = {entry.value for entry in matches}
    if len(values) > 1:
        raise ConfigError(f"{kind}={name}: several installed packages register {name!r} in entry-point group "
                          f"{ENTRY_POINT_GROUPS[kind]!r} ({sorted(values)}); uninstall one or use module:Class")
    entry = matches[0]
    try:
        value = entry.load()
    except Exception as error:  # an installed package whose import fails: name it, in one line
        raise ConfigError(f"{kind}={name}: the entry point {entry.value!r} does not load "
                          f"({type(error).__name__}: {error})") from error
    return _checked_class(kind, name, value, f"entry point {entry.value!r}")


__all__ = ["ENTRY_POINT_GROUPS", "entry_point_class", "entry_point_names", "import_class", "is_import_path"]

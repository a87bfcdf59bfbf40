"""Make ``upsampler=<choice>`` accept resamplers that have no YAML in ``conf/``: ``module:Class`` and entry points.

``upsampler`` and ``downsampler`` are Hydra config groups, so ``upsampler=carafe`` selects
``conf/upsampler/carafe.yaml``. A user's class has no such file; before Hydra composes, the
entry point stores a one-key option ``{name: <choice>}`` in Hydra's ConfigStore for

- every choice written ``module:Class`` on the command line (``upsampler=nearest,my_pkg.mod:MyUp``
  in a sweep), and
- every name an installed distribution registers in the entry-point groups
  ``carafe_exp.upsamplers`` / ``carafe_exp.downsamplers``.

The class is imported only when the model is built (:mod:`carafe_exp.resample.external`), so
``--help`` stays fast and a broken import fails as the job's one-line error. YAML options
(shipped, or in a directory given by ``hydra.searchpath``) keep precedence over these.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from carafe_exp.paths import config_dir

RESAMPLER_GROUPS = {"upsampler": "carafe_exp.upsamplers", "downsampler": "carafe_exp.downsamplers"}


def _choices(override: Override) -> list[str]:
    if override.is_sweep_override():
        sweep = override.value()
        # The raw values: sweep_string_iterator() would escape the ':' of module:Class.
        return [str(value) for value in getattr(sweep, "list", [])] if override.is_discrete_sweep() else []
    value = override.value()
    return [str(value)] if isinstance(value, str) else []


def command_line_choices(overrides: Iterable[str]) -> dict[str, set[str]]:
    """The values given to the ``upsampler``/``downsampler`` groups by ``overrides`` (sweeps expanded)."""
    found: dict[str, set[str]] = {group: set() for group in RESAMPLER_GROUPS}
    candidates = [o for o in overrides if not o.startswith("-") and "=" in o]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # Hydra reports a malformed override itself, with its own message
        return found
    for override in parsed:
        group = override.key_or_group
        if group in found and override.package is None:
            found[group].update(_choices(override))
    return found


def _shipped_options(group: str) -> set[str]:
    return {path.stem for path in (config_dir() / group).glob("*.yaml")}


def register_resampler_options(overrides: Iterable[str]) -> dict[str, list[str]]:
    """Store a ConfigStore option for each import-path choice and installed entry point; return what was stored."""
    store = ConfigStore.instance()
    stored: dict[str, list[str]] = {}
    for group, choices in command_line_choices(overrides).items():
        shipped = _shipped_options(group)
        names = {choice for choice in choices if ":" in choice}
        names |= {entry.name for entry in metadata.entry_points(group=RESAMPLER_GROUPS[group])}
        names -= shipped
        for name in sorted(names):
            store.store(group=group, name=name, node={"name": name})
        stored[group] = sorted(names)
    return stored


__all__ = ["RESAMPLER_GROUPS", "command_line_choices", "register_resampler_options"]

"""Registries of upsamplers and downsamplers, and the builders that make them from a name or config.

Every upsampler is an ``nn.Module`` constructed as ``cls(channels, scale, **params)`` whose
forward maps (N, C, H, W) to (N, C, s*H, s*W); every downsampler maps (N, C, H, W) to
(N, C, ceil(H/s), ceil(W/s)). The registry key is the Hydra option name in
``conf/upsampler/`` and ``conf/downsampler/``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.resample.checks import ResamplerArgumentError

ModuleClass = TypeVar("ModuleClass", bound=type[nn.Module])

UPSAMPLERS: dict[str, type[nn.Module]] = {}
DOWNSAMPLERS: dict[str, type[nn.Module]] = {}

# The downsampler option that means "keep the architecture's own strided operator": model
# sites that see it leave the network untouched, so `downsampler=conv` is the paper's baseline.
ORIGINAL_DOWNSAMPLER = "conv"


def _register(table: dict[str, type[nn.Module]], kind: str, name: str) -> Callable[[ModuleClass], ModuleClass]:
    def decorator(cls: ModuleClass) -> ModuleClass:
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} {name!r} is already registered by {table[name].__qualname__}")
        table[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def register_upsampler(name: str) -> Callable[[ModuleClass], ModuleClass]:
    """Class decorator that makes an upsampler available to :func:`build_upsampler` as ``name``."""
    return _register(UPSAMPLERS, "upsampler", name)


def register_downsampler(name: str) -> Callable[[ModuleClass], ModuleClass]:
    """Class decorator that makes a downsampler available to :func:`build_downsampler` as ``name``."""
    return _register(DOWNSAMPLERS, "downsampler", name)


def split_spec(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return ``(name, params)`` from a registry name or a mapping with a ``name`` key."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        params = {str(k): v for k, v in spec.items()}
        if "name" not in params:
            raise ConfigError(f"resampler config needs a 'name' key, got keys {sorted(params)}")
        name = params.pop("name")
        params.pop("_target_", None)
        return str(name), params
    raise TypeError(f"resampler spec must be a name or a mapping with 'name', got {type(spec).__name__}")


def _build(table: dict[str, type[nn.Module]], kind: str, spec: str | Mapping[str, Any], channels: int, scale: int,
           overrides: dict[str, Any]) -> nn.Module:
    name, params = split_spec(spec)
    params.update(overrides)
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table))}")
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{kind} {name!r}: channels must be a positive int, got {channels!r}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"{kind} {name!r}: scale must be a positive int, got {scale!r}")
    cls = table[name]
    signature = inspect.signature(cls.__init__)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not accepts_any:
        accepted = [p for p in signature.parameters if p not in ("self", "channels", "scale")]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ConfigError(f"{kind} {name!r} got unknown parameter(s) {unknown}; it accepts {accepted}")
    try:
        return cls(channels, scale, **params)
    except ResamplerArgumentError as error:
        # Name the key as the command line writes it (upsampler.k_up=4), not the module's own words.
        raise ConfigError(f"{kind}.{error.argument}={error.value!r} is not valid for {kind}={name}: it "
                          f"{error.requirement}") from error
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{kind}={name} with {params}: {error}") from error


def build_upsampler(spec: str | Mapping[str, Any], channels: int, scale: int, **overrides: Any) -> nn.Module:
    """Make the upsampler named by ``spec`` (a name, or a config mapping with ``name``) for ``channels``, ``scale``.

    ``overrides`` replace entries of the config; unknown parameters raise ValueError naming the accepted ones.
    """
    return _build(UPSAMPLERS, "upsampler", spec, channels, scale, overrides)


def build_downsampler(spec: str | Mapping[str, Any], channels: int, scale: int, **overrides: Any) -> nn.Module:
    """Make the downsampler named by ``spec`` (a name, or a config mapping with ``name``) for ``channels``, ``scale``.

    ``overrides`` replace entries of the config; unknown parameters raise ValueError naming the accepted ones.
    """
    return _build(DOWNSAMPLERS, "downsampler", spec, channels, scale, overrides)

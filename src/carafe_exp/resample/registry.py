"""Registries of upsamplers and downsamplers, and the builders that make them from a name or config.

Every upsampler is an ``nn.Module`` constructed as ``cls(channels, scale, **params)`` whose
forward maps (N, C, H, W) to (N, C, s*H, s*W); every downsampler maps (N, C, H, W) to
(N, C, ceil(H/s), ceil(W/s)). The registry key is the Hydra option name in
``conf/upsampler/`` and ``conf/downsampler/``. A guided upsampler (``requires_guide = True``,
see :mod:`carafe_exp.resample.guided`) is called ``forward(x, guide)``.

A name the registry does not hold is looked up outside the package
(:mod:`carafe_exp.resample.external`): ``module:Class``, then the installed entry points. Such a
class gets the same argument checks, and its output shape is checked at its first forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.resample.checks import ResamplerArgumentError
from carafe_exp.resample.external import entry_point_class, entry_point_names, import_class, is_import_path
from carafe_exp.resample.first_forward import check_first_output
from carafe_exp.resample.guided import refuse_guided_at, requires_guide

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


def resolve_class(kind: str, name: str) -> tuple[type[nn.Module], bool]:
    """The class ``name`` means for ``kind`` and whether it comes from outside the package.

    Registry first, then ``module:Class``, then the installed entry points; otherwise a one-line
    ConfigError listing what is available.
    """
    table = UPSAMPLERS if kind == "upsampler" else DOWNSAMPLERS
    if name in table:
        return table[name], False
    if is_import_path(name):
        return import_class(kind, name), True
    external = entry_point_class(kind, name)
    if external is not None:
        return external, True
    installed = entry_point_names(kind)
    extra = f"; installed: {', '.join(installed)}" if installed else ""
    raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table))}{extra}; or name your own "
                      f"class as {kind}.name=<module>:<Class>")


def _build(kind: str, spec: str | Mapping[str, Any], channels: int, scale: int, overrides: dict[str, Any],
           site: str | None, guide_available: bool) -> nn.Module:
    name, params = split_spec(spec)
    params.update(overrides)
    cls, external = resolve_class(kind, name)
    where = f" at {site}" if site else ""
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{kind} {name!r}: channels must be a positive int, got {channels!r}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"{kind} {name!r}: scale must be a positive int, got {scale!r}")
    if kind == "upsampler" and requires_guide(cls) and not guide_available:
        refuse_guided_at(cls, name, site)
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):  # a C-implemented __init__: let the call itself say what it refuses
        signature = None
    if signature is not None:
        parameters = signature.parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        positional = [p for p in parameters.values() if p.name != "self"
                      and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        takes_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.values())
        if external and len(positional) < 2 and not takes_varargs:
            raise ConfigError(f"{kind}={name}{where}: {cls.__qualname__}.__init__ must take (channels, scale, "
                              f"**params) positionally; it takes {[p.name for p in positional]}")
        if not accepts_any:
            accepted = [p for p in parameters if p not in ("self", "channels", "scale")]
            unknown = sorted(set(params) - set(accepted))
            if unknown:
                raise ConfigError(f"{kind} {name!r} got unknown parameter(s) {unknown}; it accepts {accepted}")
    try:
        module = cls(channels, scale, **params)
    except ResamplerArgumentError as error:
        # Name the key as the command line writes it (upsampler.k_up=4), not the module's own words.
        raise ConfigError(f"{kind}.{error.argument}={error.value!r} is not valid for {kind}={name}: it "
                          f"{error.requirement}") from error
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{kind}={name} with {params}: {error}") from error
    except Exception as error:
        if not external:
            raise
        # Someone else's constructor: one line naming the class, the site and what it was given.
        raise ConfigError(f"{kind}={name}{where}: {cls.__qualname__}(channels={channels}, scale={scale}, "
                          f"**{params}) failed: {type(error).__name__}: {error}") from error
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{kind}={name}{where}: calling it gave {type(module).__name__}, not an nn.Module")
    if external:
        module.registry_name = name  # type: ignore[assignment]
        check_first_output(module, kind, name, scale, site)
    return module


def build_upsampler(spec: str | Mapping[str, Any], channels: int, scale: int, *, site: str | None = None,
                    guide_available: bool = False, **overrides: Any) -> nn.Module:
    """Make the upsampler named by ``spec`` (a name, or a config mapping with ``name``) for ``channels``, ``scale``.

    ``overrides`` replace entries of the config; unknown parameters raise ValueError naming the accepted ones.
    ``site`` names the model site in error messages; a guided upsampler is refused unless
    ``guide_available`` (the site passes ``guide=`` to its forward).
    """
    return _build("upsampler", spec, channels, scale, overrides, site, guide_available)


def build_downsampler(spec: str | Mapping[str, Any], channels: int, scale: int, *, site: str | None = None,
                      **overrides: Any) -> nn.Module:
    """Make the downsampler named by ``spec`` (a name, or a config mapping with ``name``) for ``channels``, ``scale``.

    ``overrides`` replace entries of the config; unknown parameters raise ValueError naming the accepted ones.
    ``site`` names the model site in error messages.
    """
    return _build("downsampler", spec, channels, scale, overrides, site, False)

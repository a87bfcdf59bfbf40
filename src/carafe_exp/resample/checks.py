"""Argument checks shared by the resamplers, so every bad hyper-parameter fails with one clear line.

Each check raises :class:`ResamplerArgumentError` (a ``ConfigError``, hence a ``ValueError``) that
keeps the argument's name (the config key: ``k_up``, ``k_encoder``, ``c_m``, ``groups``, ...), its
value and what it must be; ``build_upsampler``/``build_downsampler`` turn it into
``upsampler.k_up=4: ...`` so the command line's key is named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from carafe_exp.errors import ConfigError


class ResamplerArgumentError(ConfigError):
    """A resampler hyper-parameter with a value it cannot take."""

    def __init__(self, owner: str, argument: str, value: Any, requirement: str) -> None:
        self.owner, self.argument, self.value, self.requirement = owner, argument, value, requirement
        super().__init__(f"{owner}: {argument} {requirement}, got {value!r}")


def check_odd_kernel(owner: str, name: str, value: int) -> None:
    """Raise unless ``value`` is an odd int >= 1 (centred windows need an odd size)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value % 2 == 0:
        raise ResamplerArgumentError(owner, name, value, "must be an odd int >= 1")


def check_positive_int(owner: str, name: str, value: int) -> None:
    """Raise unless ``value`` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ResamplerArgumentError(owner, name, value, "must be an int >= 1")


def check_divides(owner: str, name: str, divisor: int, channels: int) -> None:
    """Raise unless ``divisor`` divides ``channels``."""
    if channels % divisor != 0:
        raise ResamplerArgumentError(owner, name, divisor, f"must divide channels={channels}")


def check_choice(owner: str, name: str, value: str, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ResamplerArgumentError(owner, name, value, f"must be one of {list(choices)}")

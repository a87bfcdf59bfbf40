"""Argument checks shared by the resamplers, so every bad hyper-parameter fails with one clear line."""

from __future__ import annotations

from collections.abc import Sequence


def check_odd_kernel(owner: str, name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is an odd int >= 1 (centred windows need an odd size)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value % 2 == 0:
        raise ValueError(f"{owner}: {name} must be an odd int >= 1, got {value!r}")


def check_positive_int(owner: str, name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")


def check_divides(owner: str, name: str, divisor: int, channels: int) -> None:
    """Raise ValueError unless ``divisor`` divides ``channels``."""
    if channels % divisor != 0:
        raise ValueError(f"{owner}: {name}={divisor} must divide channels={channels}")


def check_choice(owner: str, name: str, value: str, choices: Sequence[str]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")

"""Command-line overrides whose value is an existing path are quoted for Hydra's override grammar.

A sweep job's directory is named after its overrides (``3_upsampler.k_up=5,upsampler.c_m=64``),
so giving it back to ``carafe-exp`` (``ckpt_path=<job dir>``, ``hydra.run.dir=<job dir>
ckpt_path=last``, ``model.backbone.weights=<job dir>``) put ``=`` and ``,`` into an unquoted
value, which Hydra rejects ("mismatched input '='") or reads as a sweep. A value that names an
existing file or directory and holds characters Hydra does not take unquoted is wrapped in
quotes before Hydra parses the command line; every other override is left exactly as typed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

# Characters Hydra's grammar accepts in an unquoted value (OverrideLexer: ID, UNQUOTED_CHAR).
_UNQUOTED_SAFE = re.compile(r"[A-Za-z0-9_\-/\\+.%@]*")


def _is_existing_path(value: str) -> bool:
    try:
        return Path(value).expanduser().exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
        return False


def quote_path_value(override: str) -> str:
    """``key=<existing path with = or ,>`` as ``key='<path>'``; any other override unchanged."""
    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"" or _UNQUOTED_SAFE.fullmatch(value):
        return override
    if not _is_existing_path(value):
        return override
    quote = "'" if "'" not in value else '"'
    if quote in value:
        return override  # both quote characters in a path: leave it to the user
    return f"{key}={quote}{value}{quote}"


def quote_path_overrides(argv: Sequence[str], positions: Sequence[int]) -> list[str]:
    """``argv`` with the overrides at ``positions`` passed through :func:`quote_path_value`."""
    quoted = list(argv)
    for index in positions:
        quoted[index] = quote_path_value(quoted[index])
    return quoted

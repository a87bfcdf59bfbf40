"""The authors' reference implementations, imported by the equivalence tests only (never by the package).

``make test`` sets ``CARAFE_EXP_REQUIRE_REFERENCE=1``: there a reference that does not import fails the test
instead of skipping it, so a green ``make test`` always means every equivalence was checked. Elsewhere (a plain
``pytest`` in an environment without the ``reference`` extra) the test skips and names the install command.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_ENV = "CARAFE_EXP_REQUIRE_REFERENCE"
INSTALL_HINT = "pip install -c constraints.txt -e '.[dev]' && pip install -c constraints.txt --no-deps mmagic"


def import_reference(name: str) -> ModuleType:
    """Import a reference package (``mit_semseg``, ``mmdet``, ``mmagic``…), or skip/fail as above."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if os.environ.get(REQUIRE_ENV) == "1":
            raise
        pytest.skip(f"reference package {name} does not import ({error}); install it with: {INSTALL_HINT}")

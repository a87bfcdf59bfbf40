"""Fixtures of the reassembly-operator tests: a fixed seed and the compiled extension."""

from __future__ import annotations

import pytest
import torch

from carafe_exp.ops import extension


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def compiled_extension():
    """The compiled extension; a build failure fails the tests that need it (never skips)."""
    return extension.load()

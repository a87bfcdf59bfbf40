"""Fixtures of the reassembly-operator tests: a fixed seed, the compiled extension and the CUDA emulation."""

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


@pytest.fixture(scope="session")
def cuda_emulation():
    """The CUDA kernels built as host code (csrc/emulation/); a build failure fails the tests that need it."""
    return extension.build_emulation()

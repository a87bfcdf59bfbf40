"""Fixtures of the CLI tests: a module-wide CLI environment, so one trained run can serve several tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_cli_env(sample_cache: Path) -> dict[str, str]:
    """The environment of ``cli_env`` (tests/conftest.py), for module-scoped fixtures."""
    env = dict(os.environ)
    env["CARAFE_EXP_CACHE"] = str(sample_cache)
    env["WANDB_MODE"] = "offline"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env

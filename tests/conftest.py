"""Shared test fixtures: a per-session sample cache, module directories, the CLI environment, the gpu marker's skip."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_thread_per_xdist_worker() -> None:
    """Two workers with two threads each on two cores slow every test several times over."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of generated sample datasets shared by every xdist worker of the session."""
    cache = tmp_path_factory.getbasetemp().parent / "carafe-exp-cache"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="module")
def module_tmp_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory one test module's shared runs and checkpoints live in, removed after the module.

    Module-scoped ``tmp_path_factory`` directories otherwise stay until the session ends, and the
    suite's checkpoints add up to gigabytes. Like ``tmp_path`` under the "failed" retention policy,
    the directory is kept when a test of the module failed, so its runs can be looked at.
    """
    failures_before = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield path
    if request.session.testsfailed == failures_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def module_cli_env(sample_cache: Path) -> dict[str, str]:
    """The environment a CLI subprocess runs in; module-scoped so one trained run can serve several tests."""
    env = dict(os.environ)
    env["CARAFE_EXP_CACHE"] = str(sample_cache)
    env["WANDB_MODE"] = "offline"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def cli_env(module_cli_env: dict[str, str]) -> dict[str, str]:
    """``module_cli_env`` as a copy a test may change."""
    return dict(module_cli_env)


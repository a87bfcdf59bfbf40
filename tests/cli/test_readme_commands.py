"""Every ``carafe-exp`` command in the README runs as written.

Commands are taken from the README's code blocks. Placeholders are expected (``<run dir>``,
``/data/...`` paths of datasets that are not here): each command is checked in its dry form, its
composed config (every job of a sweep) through the run loop's configuration checks, the way
``--cfg job`` would show it, minus what needs this machine's devices. ``--help`` and ``--cfg``
commands run as written. Single runs on the built-in sample data, one per task, also run for real
(``trainer.fast_dev_run=true``) in the slow tier.

The README's "whole of CARAFE Table 2" sweep was refused (``devices: auto`` counted as many on a
machine with one device); the dry check runs the same launch check the run does.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from helpers import REPO, run_cli

README = REPO / "README.md"
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
_PLACEHOLDER = re.compile(r"<[^<>\n]+>")


def readme_commands() -> list[str]:
    """The ``carafe-exp ...`` command lines of the README's code blocks, comments and continuations removed."""
    commands = []
    for block in _FENCE.findall(README.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("carafe-exp ") or line == "carafe-exp":
                commands.append(" ".join(shlex.split(line.replace("<same overrides>", ""), comments=True)))
    return commands


def _arguments(command: str) -> list[str]:
    """The command's arguments, every ``<placeholder>`` replaced by a plain token."""
    return shlex.split(_PLACEHOLDER.sub("placeholder", command))[1:]


COMMANDS = readme_commands()


def test_the_readme_has_commands() -> None:
    assert len(COMMANDS) >= 5, COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_readme_command_composes_and_passes_the_checks(command: str, cli_env: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from carafe_exp.runs.preflight import check_composition
    from carafe_exp.sweeps.plan import check_sweep, compose_job, without_hydra

    arguments = _arguments(command)
    if any(flag in arguments for flag in ("--help", "-h", "--cfg", "-c", "--info", "-i")):
        result = run_cli(arguments, cli_env, fresh_process=True)
        assert result.stdout.strip(), command
        return
    monkeypatch.setenv("CARAFE_EXP_CACHE", cli_env["CARAFE_EXP_CACHE"])
    overrides = [a for a in arguments if a not in ("-m", "--multirun")]
    if len(overrides) != len(arguments):
        assert check_sweep(overrides), command
        return
    check_composition(without_hydra(compose_job(overrides)))


def _runs_here(command: str) -> bool:
    """A single run on the built-in sample data that this machine can run in seconds."""
    arguments = _arguments(command)
    keys = {a.split("=", 1)[0] for a in arguments}
    needs_elsewhere = {"data.root", "ckpt_path", "trainer", "hydra/launcher", "trainer.devices", "trainer.num_nodes"}
    return bool(arguments) and not arguments[0].startswith("-") and not keys & needs_elsewhere


def _first_per_task(commands: list[str]) -> list[str]:
    chosen: dict[str, str] = {}
    for command in commands:
        task = next((a.split("=", 1)[1] for a in _arguments(command) if a.startswith("task=")), "detection")
        chosen.setdefault(task, command)
    return list(chosen.values())


@pytest.mark.slow
@pytest.mark.parametrize("command", _first_per_task([c for c in COMMANDS if _runs_here(c)]))
def test_readme_command_runs_on_the_sample(command: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_cli([*_arguments(command), "trainer.fast_dev_run=true", f"hydra.run.dir={run_dir}"], cli_env,
            fresh_process=True)
    assert '"status": "completed"' in (run_dir / "metrics.json").read_text()

"""Evaluating or resuming a run uses that run's configuration: its saved overrides come first.

``carafe-exp train=false ckpt_path=<run dir>`` must build the model the run trained, not the
default one. Hydra saves every run's command-line overrides in ``<run dir>/.hydra/overrides.yaml``;
the entry point puts those in front of the overrides it was given, and any key given on the
command line wins. The same holds for resuming (``hydra.run.dir=<run dir> ckpt_path=last``), so
a killed run resumes with its own settings even when the command repeats none of them.

Composing through Hydra again (rather than reading the saved ``config.yaml``) keeps group choices,
interpolations and the run name exactly as a fresh run with those overrides would have them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from carafe_exp.sweeps.dirname import override_key

# What the current command decides by itself, whatever the saved run did.
NOT_INHERITED = frozenset({"ckpt_path", "train", "test"})
# Hydra's flags that take a value (the value is not an override).
_FLAGS_WITH_VALUE = frozenset({"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                               "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"})
_MULTIRUN_FLAGS = frozenset({"-m", "--multirun"})


@dataclass(frozen=True)
class InheritedRun:
    """The run whose overrides a command inherits, and which of them it took."""

    run_dir: Path
    inherited: tuple[str, ...]

    def describe(self) -> str:
        """One line for the log."""
        taken = " ".join(self.inherited) if self.inherited else "(none beyond the command line's)"
        return f"using the configuration of {self.run_dir}: its overrides {taken}, then this command's"


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def override_positions(argv: Sequence[str]) -> list[int]:
    """Indices of the Hydra overrides (``key=value``) among command-line arguments, skipping flags and their values."""
    positions, skip_next = [], False
    for index, token in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        if token.startswith("-"):
            skip_next = token in _FLAGS_WITH_VALUE and token not in ("--info", "-i")
            continue
        if "=" in token or token.startswith("~"):
            positions.append(index)
    return positions


def _value(overrides: Sequence[str], key: str) -> str | None:
    found = None
    for item in overrides:
        if override_key(item) == key and "=" in item:
            found = _unquote(item.split("=", 1)[1])
    return found


def source_run_dir(overrides: Sequence[str]) -> Path | None:
    """The run directory whose configuration ``ckpt_path`` points into, if it has a saved Hydra config."""
    ckpt_path = _value(overrides, "ckpt_path")
    if ckpt_path in (None, "", "null", "None"):
        return None
    if ckpt_path == "last":
        run_dir = _value(overrides, "hydra.run.dir")
        candidate = Path(run_dir).expanduser() if run_dir else None
    else:
        path = Path(ckpt_path).expanduser()
        if path.is_dir():
            candidate = path
        elif path.is_file() and path.parent.name == "checkpoints":
            candidate = path.parent.parent
        else:
            candidate = None
    if candidate is not None and (candidate / ".hydra" / "overrides.yaml").is_file():
        return candidate
    return None


def saved_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides a run was started with (``.hydra/overrides.yaml``)."""
    loaded = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    return [str(item) for item in loaded]


def with_saved_overrides(argv: Sequence[str]) -> tuple[list[str], InheritedRun | None]:
    """``argv`` with the saved overrides of the run ``ckpt_path`` refers to put in front; given keys win.

    Sweeps (``-m``) are left alone: each job's ``ckpt_path`` is its own business.
    """
    argv = list(argv)
    if any(token in _MULTIRUN_FLAGS for token in argv):
        return argv, None
    positions = override_positions(argv)
    given = [argv[i] for i in positions]
    run_dir = source_run_dir(given)
    if run_dir is None:
        return argv, None
    given_keys = {override_key(item) for item in given}
    inherited = [item for item in saved_overrides(run_dir)
                 if override_key(item) not in given_keys and override_key(item) not in NOT_INHERITED]
    insert_at = positions[0] if positions else len(argv)
    return argv[:insert_at] + inherited + argv[insert_at:], InheritedRun(run_dir, tuple(inherited))

"""Helpers shared by the tests: run the CLI in a subprocess, tiny run overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "carafe_exp.cli"]

# Small enough that a classification run takes seconds on 2 CPU cores.
TINY_CLASSIFICATION = [
    "task=classification",
    "model.backbone.depth=18",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.image_size=32",
    "data.resize_size=36",
    "data.sample.num_classes=4",
    "data.sample.train_per_class=8",
    "data.sample.val_per_class=4",
    "data.sample.size=40",
]



def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: int = 600,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``carafe-exp`` as a user would, in a subprocess."""
    result = subprocess.run(CLI + args, env=env, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"carafe-exp {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result

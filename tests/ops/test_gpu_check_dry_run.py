"""scripts/gpu_check.py --dry-run: every step of `make gpu-check` checked on the CPU, without CUDA.

No GPU runs in `make test`; the dry run executes each step as far as a CPU allows (the CPU build,
collecting the GPU tests, the plans for an H200, timing the small cases, the 64-bit check's
sampling at a small size, the sanitizer case run directly) and proves the path imports torch only.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.slow  # ~25 s of CPU: two child processes (the GPU tests' collection, the sanitizer case)
def test_dry_run_checks_every_step(tmp_path: Path, compiled_extension) -> None:
    out = tmp_path / "op_dry.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["passed"]
    steps = report["steps"]
    assert list(steps) == ["build", "gpu_tests", "plan", "timing", "index64", "sanitizers", "imports"]
    assert all(step["status"] == "passed" for step in steps.values()), {name: step.get("error") for name, step in steps.items()}
    assert "collected" in steps["gpu_tests"]["summary"]
    # The plans an H200 gets for the cases timed, for every kernel choice.
    assert steps["plan"]["multiprocessors"] == 132
    assert set(steps["plan"]["cases"]["quick_up_12x14"]) == {"simple", "tiled", "auto"}
    assert {case["case"] for case in steps["timing"]["cases"]} == {"quick_up_12x14", "quick_down_24x28"}
    assert steps["index64"]["checked"] == 8 and not steps["index64"]["above_2_31"]
    assert steps["imports"]["forbidden_imported"] == []
    assert report["default_kernel_set"] == "simple"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the real check runs (make gpu-check)")
def test_without_cuda_it_asks_for_the_dry_run(capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        gpu_check = importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert gpu_check.main([]) == 2
    assert "no CUDA device visible; --dry-run checks the steps on the CPU" in capsys.readouterr().err

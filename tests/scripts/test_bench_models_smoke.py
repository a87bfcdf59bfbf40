"""Smoke test of scripts/bench_models.py (``make bench-models``): --quick runs and writes both reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_models.py"


@pytest.mark.slow
def test_quick_benchmark_writes_detection_and_upernet_reports(tmp_path: Path) -> None:
    out = tmp_path / "models.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--upsamplers", "nearest,carafe",
                             "--skip-allocator-comparison", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    detection = json.loads(out.read_text())
    assert {row["upsampler"] for row in detection["results"]} == {"nearest", "carafe"}
    assert detection["machine"]
    upernet = json.loads((tmp_path / "upernet_models.json").read_text())
    assert [row["upsampler"] for row in upernet["results"]] == ["bilinear", "carafe"]
    assert 0.0 < upernet["carafe_upsamplers_share_of_carafe_train_step"] < 1.0

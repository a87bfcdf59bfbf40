"""Smoke test of scripts/bench_op.py: --quick runs end to end and writes a well-formed JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench_op.py"


def test_quick_benchmark_writes_json(tmp_path: Path, compiled_extension) -> None:
    out = tmp_path / "op_quick.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeats", "2", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fwd+bwd ms" in result.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_cores"] >= 1 and report["machine"]["torch_version"]
    assert report["copy_bandwidth_GBps"] > 0
    # Configured as the carafe-exp process is (carafe_exp.allocator), and recorded.
    assert report["machine"]["cpu_allocator"]["reason"]
    assert report["machine"]["cpu_allocator"]["applied"] == (report["machine"]["cpu_allocator"]["reason"] == "glibc mallopt")
    assert {case["case"] for case in report["cases"]} == {"quick_up_12x14", "quick_down_24x28"}
    for case in report["cases"]:
        results = case["results"]
        assert set(results) == {"reference", "compiled", "compiled_into", "nearest", "floor", "compute_floor"}
        assert results["floor"]["forward_ms"] > 0 and results["compute_floor"]["forward_ms"] > 0
        assert results["compiled_into"]["forward_ms"] > 0
        for method in ("reference", "compiled", "nearest"):
            assert results[method]["forward_ms"] > 0 and results[method]["forward_backward_ms"] > 0
        # Both backends allocate their output and, in the forward pass, nothing else the tracker sees.
        assert results["compiled"]["forward_peak_extra_bytes"] == case["output_bytes"]
        assert results["reference"]["forward_peak_extra_bytes"] >= case["output_bytes"]
        assert case["summary"]["compiled_speedup_forward"] > 0

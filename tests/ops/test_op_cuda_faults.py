"""The emulation catches the GPU bugs it used to be blind to, each shown with a deliberate bug.

The kernels carry three deliberate bugs behind ``CARAFE_FAULT`` (csrc/carafe_cuda_compat.h), a
constant false in every real build and switched on one at a time by ``set_fault`` of the
emulation build only:

- ``unwritten_output``: the tiled forward never writes the last channel of its slice. Outputs come
  from ``at::empty``; run after the simple kernels on the same shape, the skipped elements could
  read back the simple kernels' correct values. The emulation fills every output with NaN before
  its launches, so the comparison fails.
- ``shared_read_past_end``: the tiled forward reads one element past its dynamic shared memory.
  The emulation's canaries read as ~1e-16 and the read does not reach the results: every tolerance
  passes. Under AddressSanitizer the canaries are poisoned and the read aborts the process.
- ``global_read_past_end``: the simple forward reads one element past the end of the features,
  likewise invisible in the results; AddressSanitizer's red zone after the tensor catches it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from carafe_exp.ops import extension, reassemble_reference
from ops.op_cases import random_case

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def fault(cuda_emulation):
    """Switches on one deliberate bug of the emulated kernels; always switched off afterwards."""
    yield cuda_emulation.set_fault
    cuda_emulation.set_fault("none")


def _forward(emulation, features, kernels, cuda_kernels):
    return emulation.forward(features, kernels, 5, 2, 1, False, False, cuda_kernels, emulation.max_blocks, "ascending")


def test_unwritten_output_fails_the_comparison(fault, cuda_emulation) -> None:
    features, kernels = random_case(2, 40, 6, 5, 5, 2, 1, False)
    expected = reassemble_reference(features, kernels, 5, 2, 1, False)
    # Without the bug both sets match; the tiled forward splits the 40 channels into two slices here.
    for cuda_kernels in ("simple", "tiled"):
        torch.testing.assert_close(_forward(cuda_emulation, features, kernels, cuda_kernels), expected)
    assert cuda_emulation.plan([2, 40, 6, 5], 5, 2, 1, False, "float64", "tiled", 132)["forward"]["splits"] == 2
    fault("unwritten_output")
    _forward(cuda_emulation, features, kernels, "simple")  # the previous kernels' correct values, freed
    out = _forward(cuda_emulation, features, kernels, "tiled")
    # Exactly the last channel of each slice (19 and 39) was never written: NaN, not a stale value.
    unwritten = out.isnan().all(dim=(0, 2, 3))
    assert unwritten.nonzero().flatten().tolist() == [19, 39]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", ["shared_read_past_end", "global_read_past_end"])
def test_out_of_bounds_reads_are_invisible_without_the_sanitizer(name: str, fault, cuda_emulation) -> None:
    # Why the sanitizer build exists: the plain emulation's results stay within every tolerance.
    features, kernels = random_case(1, 8, 6, 5, 5, 2, 1, False, dtype=torch.float32)
    fault(name)
    for cuda_kernels in ("simple", "tiled"):
        out = _forward(cuda_emulation, features, kernels, cuda_kernels)
        torch.testing.assert_close(out, reassemble_reference(features, kernels, 5, 2, 1, False))


def _run_sanitized(*faults: str) -> subprocess.CompletedProcess:
    """tests/ops/asan_emulation_case.py in a process with libasan (and libstdc++, whose exception
    functions ASan intercepts) preloaded, going on after each report."""
    preload = [str(extension.asan_runtime())]
    found = subprocess.run([os.environ.get("CXX", "c++"), "-print-file-name=libstdc++.so"], capture_output=True, text=True)
    if found.returncode == 0 and Path(found.stdout.strip()).is_absolute():
        preload.append(str(Path(found.stdout.strip()).resolve()))
    source = Path(extension.__file__).resolve().parents[2]
    env = dict(os.environ)
    env |= {
        "LD_PRELOAD": " ".join(preload),
        # Python's own allocations are not freed at exit; the leaks are not the kernels'.
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), str(source), env.get("PYTHONPATH", "")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "ops.asan_emulation_case", *faults], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.mark.slow
def test_address_sanitizer_catches_out_of_bounds_reads() -> None:
    # One process (torch under ASan starts slowly): the clean kernels, then each bug in turn.
    run = _run_sanitized("none", "shared_read_past_end", "global_read_past_end")
    assert run.returncode == 0, run.stderr[-3000:]
    reports = dict(part.split("\n", 1) for part in run.stderr.split("=== fault ")[1:])
    assert set(reports) == {"none", "shared_read_past_end", "global_read_past_end"}, run.stderr[-3000:]
    assert "ERROR: AddressSanitizer" not in reports["none"], reports["none"][-3000:]
    for line in run.stdout.splitlines():
        assert float(line.rsplit(" ", 1)[1]) < 1e-4, line  # float32 kernels: the bugs change no result
    for name, kind, kernel in [
        ("shared_read_past_end", "use-after-poison", "forward_tiled_kernel"),
        ("global_read_past_end", "heap-buffer-overflow", "forward_kernel"),
    ]:
        assert f"ERROR: AddressSanitizer: {kind}" in reports[name], f"{name}: " + reports[name][-3000:]
        assert kernel in reports[name]

"""carafe_exp.allocator: large blocks come from the heap once configured, and what opts out.

Checked through glibc's own accounting (mallinfo2: bytes in mmap-ed blocks), never by timing,
in fresh interpreters so that this process's allocator stays as it was.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carafe_exp import allocator

REPO = Path(__file__).resolve().parents[1]

# Allocates and frees a 40 MB block with malloc and reports whether glibc mmap-ed it.
PROBE = """
import ctypes, json, sys
from carafe_exp import allocator
settings = allocator.configure_cpu_allocator()
libc = ctypes.CDLL(None)

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
before = libc.mallinfo2().hblkhd
block = libc.malloc(40 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"applied": settings.applied, "reason": settings.reason, "mapped": mapped}))
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and _has_mallinfo2()), reason="needs glibc >= 2.33")


def _probe(**environment: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in (allocator.ALLOCATOR_ENV, "GLIBC_TUNABLES")}
    env.update(environment)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_configured_process_serves_large_blocks_from_the_heap() -> None:
    report = _probe()
    assert report["applied"] and report["mapped"] == 0


def test_system_allocator_is_left_alone_when_asked() -> None:
    # glibc's default: a 40 MB block is above its (at most 32 MiB) mmap threshold.
    report = _probe(**{allocator.ALLOCATOR_ENV: "system"})
    assert not report["applied"] and report["mapped"] >= 40 << 20


def test_glibc_settings_from_the_environment_win() -> None:
    report = _probe(MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert not report["applied"] and "MALLOC_MMAP_THRESHOLD_" in report["reason"]
    assert report["mapped"] >= 40 << 20


def test_unknown_choice_warns_in_one_line_and_keeps_the_defaults(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(allocator.ALLOCATOR_ENV, "jemalloc")
    settings = allocator.configure_cpu_allocator()
    assert not settings.applied
    assert caplog.messages == [f"${allocator.ALLOCATOR_ENV} must be one of tuned, system; got 'jemalloc': keeping the system allocator's defaults"]


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(allocator.ALLOCATOR_ENV, raising=False)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.configure_cpu_allocator() == allocator.AllocatorSettings(False, "the C library is not glibc")


def test_the_cli_configures_its_process() -> None:
    # The one-line warning for an unknown choice shows that carafe-exp's main() ran the configuration.
    env = dict(os.environ, **{allocator.ALLOCATOR_ENV: "bogus"})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    code = "import sys; from carafe_exp.cli import main; sys.argv = ['carafe-exp', '--cfg', 'job']; main()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"${allocator.ALLOCATOR_ENV} must be one of tuned, system; got 'bogus'" in result.stderr

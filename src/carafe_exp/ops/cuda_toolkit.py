"""Find the CUDA toolkit that the extension build should use.

torch guesses CUDA_HOME from ``which nvcc``; when nvcc is a wrapper script (e.g.
``/usr/local/bin/nvcc`` that execs ``/usr/local/cuda-13.0/bin/nvcc``) that guess is
``/usr/local``, which has no CUDA runtime library, and the build or link fails. A usable
toolkit is a directory holding ``bin/nvcc`` and ``lib64/libcudart.so`` (or
``lib/libcudart.so``).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
from pathlib import Path


def is_toolkit(path: Path) -> bool:
    """Whether ``path`` holds nvcc and the CUDA runtime library."""
    has_nvcc = (path / "bin" / "nvcc").is_file()
    has_cudart = any((path / lib / "libcudart.so").exists() for lib in ("lib64", "lib"))
    return has_nvcc and has_cudart


def _wrapper_target(nvcc: Path) -> Path | None:
    """The binary a small shell wrapper execs (``exec /path/to/nvcc "$@"``), if any."""
    try:
        if nvcc.stat().st_size > 64 * 1024:
            return None  # a real binary, not a script
        text = nvcc.read_text(errors="ignore")
    except OSError:
        return None
    match = re.search(r"exec\s+[\"']?([^\s\"']*nvcc)\b", text)
    return Path(match.group(1)) if match else None


def _system_candidates() -> list[Path]:
    """The conventional install locations, newest versioned one first."""
    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(path).name))

    versioned = sorted(glob.glob("/usr/local/cuda-*"), key=version, reverse=True)
    return [Path("/usr/local/cuda"), *(Path(p) for p in versioned)]


def _candidates() -> list[Path]:
    found: list[Path] = []
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            found.append(Path(os.environ[variable]))
    found.extend(_system_candidates())
    nvcc = shutil.which("nvcc")
    if nvcc:
        nvcc_path = Path(nvcc)
        found.append(nvcc_path.resolve().parent.parent)
        target = _wrapper_target(nvcc_path)
        if target is not None:
            found.append(target.resolve().parent.parent)
    return found


def find_cuda_home() -> Path | None:
    """First directory that is a complete toolkit, or None."""
    for candidate in _candidates():
        if is_toolkit(candidate):
            return candidate
    return None


def configure_cuda_home() -> Path | None:
    """Point CUDA_HOME (environment and torch.utils.cpp_extension) at a complete toolkit.

    Leaves a CUDA_HOME that already is a complete toolkit alone. Returns the toolkit used,
    or None when there is none on this machine.
    """
    home = find_cuda_home()
    if home is None:
        return None
    # Set the environment first: torch.utils.cpp_extension reads CUDA_HOME when imported.
    os.environ["CUDA_HOME"] = str(home)
    cpp_extension = sys.modules.get("torch.utils.cpp_extension")
    if cpp_extension is not None:
        cpp_extension.CUDA_HOME = str(home)
    return home

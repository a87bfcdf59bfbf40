"""Locate the C++/CUDA sources of the reassembly extension (``csrc/``).

In an installed wheel they live inside the package at ``carafe_exp/csrc`` (the wheel
force-includes the repository's ``csrc/`` there); in a source checkout they are at
``<repo>/csrc``. The package location is tried first.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from carafe_exp.paths import csrc_dir as shipped_csrc_dir

CPU_SOURCES = ("carafe_bindings.cpp", "carafe_cpu.cpp")
CUDA_SOURCES = ("carafe_cuda.cu",)
HEADERS = ("carafe.h", "carafe_geometry.h")


def _is_source_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in CPU_SOURCES + CUDA_SOURCES + HEADERS)


def csrc_dir() -> Path:
    """Directory holding the extension's sources; raises FileNotFoundError if absent or incomplete."""
    root = shipped_csrc_dir()
    if not _is_source_dir(root):
        missing = [name for name in CPU_SOURCES + CUDA_SOURCES + HEADERS if not (root / name).is_file()]
        raise FileNotFoundError(f"CARAFE extension sources in {root} are incomplete: missing {', '.join(missing)}")
    return root


def source_paths(with_cuda: bool) -> list[Path]:
    """The translation units to compile, CUDA ones only when ``with_cuda``."""
    root = csrc_dir()
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [root / name for name in names]


def sources_digest(extra: str = "") -> str:
    """Short hash of every source and header (plus ``extra``), naming the build cache dir."""
    root = csrc_dir()
    digest = hashlib.sha256(extra.encode())
    for name in sorted(CPU_SOURCES + CUDA_SOURCES + HEADERS):
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:12]

"""Locate, hash and stage the C++/CUDA sources of the reassembly extension (``csrc/``).

In an installed wheel they live inside the package at ``carafe_exp/csrc`` (the wheel
force-includes the repository's ``csrc/`` there); in a source checkout they are at
``<repo>/csrc``. The package location is tried first.

Builds never compile the checkout's files in place: :func:`stage` copies them into the build
directory, whose name is a hash of their content. Two checkouts of the same sources therefore
produce byte-identical build files (torch's ``build.ninja`` records absolute source paths) and
share one build instead of rebuilding each other's.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from carafe_exp.paths import csrc_dir as shipped_csrc_dir

# Translation units of the extension the operator loads.
CPU_SOURCES = (
    "carafe_bindings.cpp",
    "carafe_cpu_forward.cpp",
    "carafe_cpu_grad_kernels.cpp",
    "carafe_cpu_grad_features.cpp",
    "carafe_cpu_backward.cpp",
)
CUDA_SOURCES = ("carafe_cuda.cu",)
HEADERS = (
    "carafe.h",
    "carafe_geometry.h",
    "carafe_plan_query.h",
    "carafe_tensor_geometry.h",
    "carafe_cpu_backward.h",
    "carafe_cpu_common.h",
    "carafe_cpu_forward_tile.h",
    "carafe_cpu_input_rows.h",
    "carafe_cpu_rows.h",
    "carafe_cpu_simd.h",
    "carafe_cuda_compat.h",
    "carafe_cuda_dispatch.h",
    "carafe_cuda_plan.h",
    "carafe_cuda_simple.cuh",
    "carafe_cuda_tiled.cuh",
)
# The test-only build that runs the CUDA kernels on the CPU (see csrc/emulation/).
EMULATION_SOURCES = ("emulation/carafe_cuda_emulated.cpp", "emulation/cuda_emulation.cpp")
EMULATION_HEADERS = ("emulation/cuda_emulation.h", "emulation/emulation_probes.cuh")

EXTENSION_FILES = CPU_SOURCES + CUDA_SOURCES + HEADERS
EMULATION_FILES = EMULATION_SOURCES + EMULATION_HEADERS + HEADERS
ALL_FILES = tuple(sorted(set(EXTENSION_FILES + EMULATION_FILES)))


def _is_source_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in ALL_FILES)


def csrc_dir() -> Path:
    """Directory holding the extension's sources; raises FileNotFoundError if absent or incomplete."""
    root = shipped_csrc_dir()
    if not _is_source_dir(root):
        missing = [name for name in ALL_FILES if not (root / name).is_file()]
        raise FileNotFoundError(f"CARAFE extension sources in {root} are incomplete: missing {', '.join(missing)}")
    return root


def source_paths(with_cuda: bool) -> list[Path]:
    """The checkout's translation units of the extension, CUDA ones only when ``with_cuda``."""
    root = csrc_dir()
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [root / name for name in names]


def sources_digest(extra: str = "", names: tuple[str, ...] = EXTENSION_FILES) -> str:
    """Short hash of the contents of ``names`` (plus ``extra``), naming a build cache dir.

    Only contents and relative names enter the hash, never the checkout's location.
    """
    root = csrc_dir()
    digest = hashlib.sha256(extra.encode())
    for name in sorted(names):
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:12]


def stage(names: tuple[str, ...], destination: Path) -> Path:
    """Copy ``names`` from csrc/ into ``destination`` and return it.

    A file already there with the same content is left untouched (ninja compares modification
    times, so rewriting it would rebuild); a changed one is replaced atomically, so concurrent
    processes staging the same sources never see a half-written file.
    """
    root = csrc_dir()
    for name in names:
        content = (root / name).read_bytes()
        target = destination / name
        if target.is_file() and target.read_bytes() == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(content)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return destination

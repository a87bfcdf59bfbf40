"""JIT build and loading of the compiled CARAFE extension (``csrc/``).

The extension is built with ``torch.utils.cpp_extension.load`` and ninja on first use and
cached in ``~/.cache/carafe-exp/ext/<torch version>-<cuda tag or cpu>-<hash>`` (or in
``$CARAFE_EXP_EXT_DIR``). The hash covers the sources' contents, the compiler flags and the
machine (the CPU code is built with ``-march=native``), so a changed source or a home
directory shared between different machines never picks up a stale binary. The sources are
compiled from a copy inside that directory (see ``sources.stage``), so every checkout of the
same sources shares one build. torch's ``load`` holds a file lock in the build directory, so
concurrent processes (pytest -n 2) build once.

CUDA kernels are compiled only when CUDA is available or ``CARAFE_EXP_BUILD_CUDA=1``. Two
sets exist (``csrc/carafe.h``): ``simple`` (the default until a GPU measures the others) and
``tiled``; ``auto`` picks one per call and pass from the launch shape.
``CARAFE_EXP_CUDA_KERNELS=tiled|auto`` or the module's ``set_cuda_kernels(...)`` selects them, and
the module's ``plan(...)`` says what each pass of a call of a given shape would run on a GPU of a
given number of multiprocessors (no GPU needed).

:func:`build_emulation` builds a second, test-only extension: the CUDA kernels compiled as host
code under the CUDA emulation (``csrc/emulation/``), which runs them on the CPU; with
``sanitize=True``, under AddressSanitizer (float kernels only; loaded in a process that preloads
libasan, see :func:`asan_runtime`).

Build ahead of time (``make ext``)::

    python -m carafe_exp.ops.extension [--verbose] [--cuda] [--emulation]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from carafe_exp.errors import ConfigError
from carafe_exp.ops import sources
from carafe_exp.ops.cuda_toolkit import configure_cuda_home

logger = logging.getLogger(__name__)

EXT_DIR_ENV = "CARAFE_EXP_EXT_DIR"
BUILD_CUDA_ENV = "CARAFE_EXP_BUILD_CUDA"
CUDA_KERNELS_ENV = "CARAFE_EXP_CUDA_KERNELS"
CUDA_KERNELS = ("simple", "tiled", "auto")

# -fopenmp: at::parallel_for is inlined into the extension and only runs in parallel when
# the extension itself is compiled with OpenMP (as ATen is). -ffp-contract=fast: fused
# multiply-adds (torch compiles with -std=c++20, which turns contraction off).
CPU_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
CUDA_FLAGS = ["-O3", "--expt-relaxed-constexpr"]
# The emulation build: host code only, no -march=native (nothing in it is tuned), and no
# strict aliasing, as the kernels' vector loads reinterpret tensor memory the way CUDA code does.
EMULATION_FLAGS = ["-O2", "-DCARAFE_CUDA_EMULATION", "-fno-strict-aliasing"]
# The AddressSanitizer build of the emulation: out-of-bounds reads of shared memory (its poisoned
# canaries) and of tensors (libasan's red zones around torch's allocations) are reported. -O1
# keeps it quick to build and run; float alone is enough for the test that uses it. Recoverable
# (with ASAN_OPTIONS=halt_on_error=0) so that one process can show several bugs in turn.
SANITIZER_FLAGS = [
    "-O1",
    "-fsanitize=address",
    "-fsanitize-recover=address",
    "-fno-omit-frame-pointer",
    "-DCARAFE_EMULATION_FLOAT_ONLY",
]
# Compiled when no GPU is visible to pick the architecture from (a compile-only check, or a
# build node without GPUs); sm_80 plus PTX runs on every GPU CUDA 13 supports from Ampere on.
FALLBACK_CUDA_ARCH = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_80,code=compute_80"]


class ExtensionBuildError(RuntimeError):
    """The compiled extension could not be built or imported."""


def cuda_requested() -> bool:
    """Whether the default build includes the CUDA kernels."""
    return torch.cuda.is_available() or os.environ.get(BUILD_CUDA_ENV, "") == "1"


def _cpu_fingerprint() -> str:
    # -march=native output is only valid on the CPU model that built it.
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                model += line
    except OSError:
        pass
    return model


def _cuda_arch_flags() -> list[str]:
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.device_count() > 0:
        return []  # torch derives -gencode flags from the list or the visible GPUs
    return list(FALLBACK_CUDA_ARCH)


def _cuda_tag() -> str:
    version = torch.version.cuda or "unknown"
    return "cu" + version.replace(".", "")


def _cache_root() -> Path:
    root = os.environ.get(EXT_DIR_ENV)
    return Path(root) if root else Path.home() / ".cache" / "carafe-exp" / "ext"


def build_directory(with_cuda: bool, cuda_flags: list[str]) -> Path:
    """Where the extension of this configuration is (or will be) built."""
    base = _cache_root()
    device_info = ""
    if with_cuda:
        capabilities = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        device_info = f"{cuda_flags}{os.environ.get('TORCH_CUDA_ARCH_LIST', '')}{capabilities}"
    digest = sources.sources_digest(f"{CPU_FLAGS}{_cpu_fingerprint()}{device_info}{sys.version}")
    tag = _cuda_tag() if with_cuda else "cpu"
    return base / f"{torch.__version__.replace('+', '_')}-{tag}-{digest}"


def _use_packaged_ninja() -> None:
    """Put the ninja of the ``ninja`` wheel (a dependency) first on PATH; torch runs ``ninja`` from PATH.

    The wheel installs it beside the interpreter, which is not on PATH when the environment is not
    activated (``.venv/bin/python``, ``.venv/bin/carafe-exp``, the Makefile): torch would report
    ninja missing and every call would fall back to the slow reference, or it would run a system
    ninja of another version, whose build log the packaged one rejects (and vice versa), rebuilding
    the cached extension each time the environment is used the other way.
    """
    try:
        import ninja
    except ImportError:
        return  # a ninja on PATH serves; torch's "Ninja is required ..." error says what to install
    bin_dir = getattr(ninja, "BIN_DIR", "")
    packaged = shutil.which("ninja", path=bin_dir) if bin_dir else None
    if packaged is None or shutil.which("ninja") == packaged:
        return
    os.environ["PATH"] = os.pathsep.join(filter(None, [bin_dir, os.environ.get("PATH", "")]))
    logger.debug("building with the ninja package's %s", packaged)


def _prepare_directory(directory_of: Callable[[], Path], names: tuple[str, ...]) -> tuple[Path, Path]:
    """The build directory (created) and the sources staged in it, or ExtensionBuildError.

    An unwritable cache (a read-only home, $CARAFE_EXP_EXT_DIR pointing at a file) or missing
    sources must fall back to the reference like any other build failure, not escape as OSError.
    """
    try:
        directory = directory_of()
        directory.mkdir(parents=True, exist_ok=True)
        return directory, sources.stage(names, directory / "csrc")
    except OSError as error:
        raise ExtensionBuildError(
            f"preparing the CARAFE extension build failed: {error} (the build cache is {_cache_root()}; "
            f"${EXT_DIR_ENV} moves it)"
        ) from error


def _import_cpp_extension() -> ModuleType:
    # Its import-time "No CUDA runtime is found" warning fires on every GPU-less machine that
    # has a toolkit, including CPU-only builds where it means nothing.
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    previous = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        torch_logger.setLevel(previous)
    return cpp_extension


def build(with_cuda: bool | None = None, verbose: bool = False) -> ModuleType:
    """Build (or reuse the cached build of) the extension and import it.

    Raises ExtensionBuildError with the compiler's complaint when it fails.
    """
    if with_cuda is None:
        with_cuda = cuda_requested()
    # Before torch.utils.cpp_extension is imported, which otherwise guesses CUDA_HOME from a
    # possibly wrapped nvcc (and warns) even for a CPU-only build.
    toolkit = configure_cuda_home()
    cpp_extension = _import_cpp_extension()

    cflags = list(CPU_FLAGS)
    cuda_flags = list(CUDA_FLAGS)
    if with_cuda:
        if toolkit is None:
            raise ExtensionBuildError(
                "CUDA kernels requested but no CUDA toolkit (bin/nvcc with lib64/libcudart.so) "
                "was found; set CUDA_HOME"
            )
        cflags.append("-DCARAFE_WITH_CUDA")
        cuda_flags += ["-DCARAFE_WITH_CUDA", *_cuda_arch_flags()]
    directory, staged = _prepare_directory(lambda: build_directory(with_cuda, cuda_flags), sources.EXTENSION_FILES)
    _use_packaged_ninja()
    name = "carafe_exp_ext_cuda" if with_cuda else "carafe_exp_ext_cpu"
    compiled = sources.CPU_SOURCES + (sources.CUDA_SOURCES if with_cuda else ())
    try:
        module = cpp_extension.load(
            name=name,
            sources=[str(staged / source) for source in compiled],
            extra_cflags=cflags,
            extra_cuda_cflags=cuda_flags if with_cuda else None,
            extra_include_paths=[str(staged)],
            extra_ldflags=list(LINK_FLAGS),  # torch appends to the list it is given
            build_directory=str(directory),
            with_cuda=with_cuda,
            verbose=verbose,
        )
    except Exception as error:  # noqa: BLE001 - torch surfaces compiler/ninja/ABI failures as many types
        raise ExtensionBuildError(f"building the CARAFE extension in {directory} failed: {error}") from error
    logger.debug("CARAFE extension loaded from %s", directory)
    return module


def emulation_directory(sanitize: bool = False) -> Path:
    """Where the CUDA emulation build of these sources is (or will be) built."""
    flags = EMULATION_FLAGS + (SANITIZER_FLAGS if sanitize else [])
    digest = sources.sources_digest(f"{flags}{sys.version}", names=sources.EMULATION_FILES)
    kind = "emulation-asan" if sanitize else "emulation"
    return _cache_root() / f"{torch.__version__.replace('+', '_')}-{kind}-{digest}"


def asan_runtime() -> Path:
    """The compiler's AddressSanitizer runtime, which a process must preload (LD_PRELOAD) to import
    the ``sanitize=True`` emulation build; ExtensionBuildError when the compiler has none."""

    compiler = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise ExtensionBuildError(f"cannot ask {compiler} for its AddressSanitizer runtime: {error}") from error
    path = Path(found.stdout.strip())
    if not path.is_absolute() or not path.exists():
        raise ExtensionBuildError(f"{compiler} has no AddressSanitizer runtime (libasan.so)")
    return path.resolve()


def build_emulation(verbose: bool = False, sanitize: bool = False) -> ModuleType:
    """Build (or reuse) and import the test-only CUDA emulation of the kernels (``csrc/emulation/``).

    Its ``forward``/``backward`` run the CUDA kernels and their dispatch, compiled unchanged as host
    code, on CPU tensors. ``sanitize=True`` builds it under AddressSanitizer (float kernels only); it
    imports only in a process started with libasan preloaded (:func:`asan_runtime`). Raises
    ExtensionBuildError with the compiler's complaint when it fails.
    """
    cpp_extension = _import_cpp_extension()
    directory, staged = _prepare_directory(lambda: emulation_directory(sanitize), sources.EMULATION_FILES)
    _use_packaged_ninja()
    try:
        module = cpp_extension.load(
            name="carafe_exp_cuda_emulation_asan" if sanitize else "carafe_exp_cuda_emulation",
            sources=[str(staged / source) for source in sources.EMULATION_SOURCES],
            extra_cflags=list(EMULATION_FLAGS) + (list(SANITIZER_FLAGS) if sanitize else []),
            extra_ldflags=["-fsanitize=address"] if sanitize else None,
            extra_include_paths=[str(staged)],
            build_directory=str(directory),
            with_cuda=False,
            verbose=verbose,
        )
    except Exception as error:  # noqa: BLE001 - as in build()
        raise ExtensionBuildError(f"building the CUDA emulation in {directory} failed: {error}") from error
    logger.debug("CUDA emulation loaded from %s", directory)
    return module


def cuda_kernels_setting() -> str | None:
    """The CUDA kernels ``$CARAFE_EXP_CUDA_KERNELS`` asks for, or None when it is unset."""
    name = os.environ.get(CUDA_KERNELS_ENV, "")
    if not name:
        return None
    if name not in CUDA_KERNELS:
        # A ConfigError (a ValueError), so the CLI answers it with one line (see backend._requested).
        raise ConfigError(f"${CUDA_KERNELS_ENV} must be one of {', '.join(CUDA_KERNELS)}; got {name!r}")
    return name


@functools.lru_cache(maxsize=None)
def _load_cached() -> ModuleType | ExtensionBuildError:
    try:
        return build()
    except ExtensionBuildError as error:
        return error


def load() -> ModuleType:
    """The extension for this process, built on first call; later calls reuse it.

    A failure is remembered too, so a broken toolchain costs one build attempt per process. The
    CUDA kernels follow ``$CARAFE_EXP_CUDA_KERNELS`` when it is set.
    """
    result = _load_cached()
    if isinstance(result, ExtensionBuildError):
        raise result
    choice = cuda_kernels_setting()
    if choice is not None and result.cuda_kernels() != choice:
        result.set_cuda_kernels(choice)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: build the extension ahead of time."""
    parser = argparse.ArgumentParser(prog="python -m carafe_exp.ops.extension", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands and output")
    parser.add_argument("--cuda", action="store_true", help="also compile the CUDA kernels (needs nvcc, not a GPU)")
    parser.add_argument(
        "--emulation", action="store_true", help="also build the test-only CUDA emulation (runs the CUDA kernels on the CPU)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with_cuda = True if args.cuda else None
    try:
        module = build(with_cuda=with_cuda, verbose=args.verbose)
        logger.info("CARAFE extension ready: %s (CUDA kernels: %s)", module.__file__, module.has_cuda)
        if args.emulation:
            emulation = build_emulation(verbose=args.verbose)
            logger.info("CUDA emulation ready: %s", emulation.__file__)
    except ExtensionBuildError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The JIT build: source discovery, cache directory, CUDA toolkit discovery, and nvcc compiling the CUDA kernels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from carafe_exp.ops import cuda_toolkit, extension, sources

REPO = Path(__file__).resolve().parents[2]


def test_sources_are_found_in_the_checkout() -> None:
    root = sources.csrc_dir()
    assert root == REPO / "csrc" or root.name == "csrc"
    assert {p.name for p in sources.source_paths(with_cuda=True)} == {
        "carafe_bindings.cpp",
        "carafe_cpu.cpp",
        "carafe_cuda.cu",
    }
    assert all(p.is_file() for p in sources.source_paths(with_cuda=True))


def test_build_directory_is_keyed_by_torch_device_and_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(extension.EXT_DIR_ENV, str(tmp_path))
    cpu = extension.build_directory(False, [])
    cuda = extension.build_directory(True, ["-gencode=arch=compute_80,code=sm_80"])
    assert cpu.parent == tmp_path and cuda.parent == tmp_path
    assert cpu.name.startswith(torch.__version__.replace("+", "_") + "-cpu-")
    assert "-cu" in cuda.name and cpu.name != cuda.name
    monkeypatch.delenv(extension.EXT_DIR_ENV)
    assert extension.build_directory(False, []).parent == Path.home() / ".cache" / "carafe-exp" / "ext"


def test_loaded_extension_has_cuda_kernels_exactly_when_requested(compiled_extension) -> None:
    assert compiled_extension.has_cuda == extension.cuda_requested()


def _fake_toolkit(root: Path, lib: str = "lib64") -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (root / lib).mkdir()
    (root / lib / "libcudart.so").write_text("")
    return root


def test_wrapper_nvcc_resolves_to_the_real_toolkit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toolkit = _fake_toolkit(tmp_path / "opt" / "cuda-99.0")
    wrapper_dir = tmp_path / "wrapper" / "bin"
    wrapper_dir.mkdir(parents=True)
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    # torch would guess wrapper_dir/.. which has no libcudart.
    assert not cuda_toolkit.is_toolkit(wrapper_dir.parent)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper_dir))
    monkeypatch.setattr(cuda_toolkit, "_system_candidates", lambda: [])
    assert cuda_toolkit.find_cuda_home() == toolkit


def test_cuda_home_is_honoured_and_lib_layout_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toolkit = _fake_toolkit(tmp_path / "cuda", lib="lib")
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert cuda_toolkit.find_cuda_home() == toolkit


def test_incomplete_cuda_home_is_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    incomplete = tmp_path / "usr_local"
    (incomplete / "bin").mkdir(parents=True)
    (incomplete / "bin" / "nvcc").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(incomplete))
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(cuda_toolkit, "_system_candidates", lambda: [])
    assert cuda_toolkit.find_cuda_home() is None


def test_nvcc_compiles_the_cuda_kernels(tmp_path: Path) -> None:
    """The CUDA sources compile (no GPU needed), with the flags torch's JIT build uses."""
    toolkit = cuda_toolkit.find_cuda_home()
    if toolkit is None:
        pytest.skip("no CUDA toolkit (nvcc + libcudart) on this machine")
    from torch.utils import cpp_extension

    torch_include = Path(torch.__file__).parent / "include"
    command = [
        str(toolkit / "bin" / "nvcc"),
        "-c",
        str(sources.csrc_dir() / "carafe_cuda.cu"),
        "-o",
        str(tmp_path / "carafe_cuda.o"),
        "-std=c++20",
        "-O1",
        "-I",
        str(sources.csrc_dir()),
        "-isystem",
        str(torch_include),
        "-isystem",
        str(torch_include / "torch" / "csrc" / "api" / "include"),
        "-isystem",
        str(toolkit / "include"),
        *cpp_extension.COMMON_NVCC_FLAGS,
        "-DCARAFE_WITH_CUDA",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "--compiler-options",
        "-fPIC",
        *extension.FALLBACK_CUDA_ARCH,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "carafe_cuda.o").stat().st_size > 0

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
        "carafe_cpu_forward.cpp",
        "carafe_cpu_grad_kernels.cpp",
        "carafe_cpu_grad_features.cpp",
        "carafe_cpu_backward.cpp",
        "carafe_cuda.cu",
    }
    assert all(p.is_file() for p in sources.source_paths(with_cuda=True))


def test_every_file_in_csrc_is_a_listed_source() -> None:
    # An unlisted file would be missing from the staged build copy and from the cache key.
    on_disk = {p.relative_to(sources.csrc_dir()).as_posix() for p in sources.csrc_dir().rglob("*") if p.is_file()}
    assert on_disk == set(sources.ALL_FILES)


def _copy_of_csrc(destination: Path) -> Path:
    shutil.copytree(sources.csrc_dir(), destination / "csrc")
    return destination / "csrc"


def test_checkouts_of_the_same_sources_share_one_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, compiled_extension) -> None:
    """Two checkouts of one commit reuse one build instead of rebuilding each other's.

    torch's build.ninja records absolute source paths; the build compiles a copy of the sources
    inside the content-keyed build directory, so the paths are the same from any checkout.
    """
    directory = Path(compiled_extension.__file__).parent
    library, ninja_file = Path(compiled_extension.__file__), directory / "build.ninja"
    before = (library.stat().st_mtime_ns, ninja_file.read_bytes(), ninja_file.stat().st_mtime_ns)
    checkouts = {name: _copy_of_csrc(tmp_path / name) for name in ("a", "b")}
    for name in ("a", "b", "a"):
        monkeypatch.setattr(sources, "shipped_csrc_dir", lambda copy=checkouts[name]: copy)
        module = extension.build()
        assert Path(module.__file__) == library
        assert (library.stat().st_mtime_ns, ninja_file.read_bytes(), ninja_file.stat().st_mtime_ns) == before
        assert str(checkouts[name]) not in ninja_file.read_text()


def test_different_sources_get_different_cache_entries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original, changed = _copy_of_csrc(tmp_path / "original"), _copy_of_csrc(tmp_path / "changed")
    with (changed / "carafe_cpu_forward.cpp").open("a") as source:
        source.write("// a change\n")
    directories = []
    for copy in (original, changed):
        monkeypatch.setattr(sources, "shipped_csrc_dir", lambda copy=copy: copy)
        directories.append((extension.build_directory(False, []), extension.emulation_directory()))
    assert directories[0][0] != directories[1][0]
    assert directories[0][1] == directories[1][1]  # the emulation does not compile the CPU kernels


def test_staging_rewrites_only_changed_files(tmp_path: Path) -> None:
    staged = sources.stage(sources.EXTENSION_FILES, tmp_path / "staged")
    stamps = {name: (staged / name).stat().st_mtime_ns for name in sources.EXTENSION_FILES}
    (staged / "carafe.h").write_text("stale")
    sources.stage(sources.EXTENSION_FILES, staged)
    assert (staged / "carafe.h").read_bytes() == (sources.csrc_dir() / "carafe.h").read_bytes()
    assert all((staged / name).stat().st_mtime_ns == stamps[name] for name in sources.EXTENSION_FILES if name != "carafe.h")


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


def test_packaged_ninja_is_used_without_an_activated_environment(tmp_path: Path, compiled_extension) -> None:
    """`.venv/bin/python` (the Makefile, a non-activated venv) has the ninja wheel's binary off PATH.

    torch runs `ninja` from PATH, so a fresh process used to fail the build ("Ninja is required")
    and fall back to the reference for every call, although ninja is a dependency and installed.
    """
    bin_dir = tmp_path / "bin"  # the compiler, but no ninja
    bin_dir.mkdir()
    for tool in ("c++", "g++", "gcc"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    library = Path(compiled_extension.__file__)
    built_at = library.stat().st_mtime_ns
    script = (
        "import shutil; from torch.utils import cpp_extension; from carafe_exp.ops import extension; "
        "print(cpp_extension.is_ninja_available()); print(extension.build().__file__); print(shutil.which('ninja'))"
    )
    env = {**os.environ, "PATH": str(bin_dir)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ninja_before, loaded, ninja_after = result.stdout.split()[-3:]
    assert ninja_before == "False"  # the situation: torch alone finds no ninja
    assert Path(loaded) == library and library.stat().st_mtime_ns == built_at  # the cached build, not rebuilt
    import ninja

    assert ninja_after == shutil.which("ninja", path=ninja.BIN_DIR)


def test_unusable_cache_directory_falls_back_like_a_failed_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cache path that cannot be created (read-only home, a file in the way) is a build failure, not an OSError."""
    import functools

    from carafe_exp.ops import backend, carafe, reassemble_reference

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(extension.EXT_DIR_ENV, str(blocker / "ext"))
    with pytest.raises(extension.ExtensionBuildError, match=r"\$CARAFE_EXP_EXT_DIR moves it"):
        extension.build(with_cuda=False)
    with pytest.raises(extension.ExtensionBuildError, match="Not a directory"):
        extension.build_emulation()
    # carafe() in a process whose first build attempt meets that cache: the reference, with the warning.
    monkeypatch.setattr(backend, "_state", {})
    monkeypatch.setattr(extension, "_load_cached", functools.lru_cache(maxsize=None)(extension._load_cached.__wrapped__))
    features, kernels = torch.randn(1, 2, 3, 3), torch.rand(1, 9, 6, 6)
    with pytest.warns(RuntimeWarning, match="compiled extension is unavailable.*Not a directory"):
        out = carafe(features, kernels, 3, 2, backend="auto")
    torch.testing.assert_close(out, reassemble_reference(features, kernels, 3, 2, 1, False))


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

"""Bad arguments raise TypeError/ValueError naming the argument and the shapes; backend selection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from carafe_exp.errors import ConfigError
from carafe_exp.ops import backend as backend_module
from carafe_exp.ops import carafe, carafe_down, extension
from ops.op_cases import random_case


def _good() -> dict:
    features, kernels = random_case(2, 8, 4, 5, 3, 2, 2, False, dtype=torch.float32)
    return dict(features=features, kernels=kernels, kernel_size=3, scale=2, groups=2)


BAD = [
    ("even kernel_size", dict(kernel_size=4), ValueError, ["kernel_size", "odd", "4"]),
    ("zero kernel_size", dict(kernel_size=0), ValueError, ["kernel_size", ">= 1"]),
    ("float scale", dict(scale=2.0), TypeError, ["scale", "integer", "2.0"]),
    ("bool groups", dict(groups=True), TypeError, ["groups", "integer"]),
    ("scale below 1", dict(scale=0), ValueError, ["scale", ">= 1", "0"]),
    ("groups not dividing C", dict(groups=3), ValueError, ["groups=3", "(2, 8, 4, 5)", "C=8"]),
    ("wrong kernel shape", dict(kernels=torch.zeros(2, 18, 8, 9)), ValueError,
     ["kernels", "(2, 18, 8, 10)", "(2, 18, 8, 9)", "(2, 8, 4, 5)"]),
    ("wrong kernel channels", dict(kernels=torch.zeros(2, 9, 8, 10)), ValueError, ["kernels", "(2, 18, 8, 10)"]),
    ("3-D features", dict(features=torch.zeros(8, 4, 5)), ValueError, ["features", "4-D", "(8, 4, 5)"]),
    ("integer dtype", dict(features=torch.zeros(2, 8, 4, 5, dtype=torch.int64)), TypeError, ["features", "int64"]),
    ("mixed dtypes", dict(kernels=torch.zeros(2, 18, 8, 10, dtype=torch.float64)), TypeError,
     ["features", "kernels", "float32", "float64"]),
    ("not a tensor", dict(kernels=[[1.0]]), TypeError, ["kernels", "torch.Tensor", "list"]),
    ("devices differ", dict(kernels=torch.zeros(2, 18, 8, 10, device="meta")), ValueError, ["cpu", "meta"]),
]


@pytest.mark.parametrize(("change", "error", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_bad_arguments_raise_clear_errors(change: dict, error: type, fragments: list[str], backend: str) -> None:
    arguments = {**_good(), **change}
    with pytest.raises(error) as caught:
        carafe(**arguments, backend=backend)
    message = str(caught.value)
    assert message.startswith("carafe:")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


def test_down_kernel_shape_error_names_ceil_sizes() -> None:
    features = torch.zeros(1, 4, 5, 7)
    with pytest.raises(ValueError, match=r"carafe_down: kernels .*\(1, 9, 3, 4\).*got \(1, 9, 2, 3\)"):
        carafe_down(features, torch.zeros(1, 9, 2, 3), 3, 2)


def test_unknown_backend_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    arguments = _good()
    with pytest.raises(ValueError, match="backend must be one of auto, compiled, reference.*'fast'"):
        carafe(**arguments, backend="fast")
    monkeypatch.setenv(backend_module.BACKEND_ENV, "cuda")
    # A ConfigError (still a ValueError), which the CLI prints as one line instead of a traceback.
    with pytest.raises(ConfigError, match=r"\$CARAFE_EXP_BACKEND must be one of"):
        carafe(**arguments)


def test_unknown_cuda_kernels_setting_is_a_config_error(monkeypatch: pytest.MonkeyPatch, compiled_extension) -> None:
    monkeypatch.setenv(extension.CUDA_KERNELS_ENV, "fast")
    with pytest.raises(ConfigError, match=r"\$CARAFE_EXP_CUDA_KERNELS must be one of simple, tiled, auto; got 'fast'"):
        carafe(**_good(), backend="compiled")


def test_cuda_kernels_setting_selects_a_kernel_set(monkeypatch: pytest.MonkeyPatch, compiled_extension) -> None:
    assert compiled_extension.cuda_kernels() == "simple"  # the default until a GPU measures the others
    try:
        for name in ("auto", "tiled", "simple"):
            monkeypatch.setenv(extension.CUDA_KERNELS_ENV, name)
            assert extension.load().cuda_kernels() == name
    finally:
        compiled_extension.set_cuda_kernels("simple")


def test_backward_checks_the_device_of_grad_output(compiled_extension) -> None:
    # The kernels read grad_output through a raw pointer on the features' device: a grad_output
    # elsewhere must be an error, not a read of another device's memory.
    features, kernels = torch.zeros(1, 4, 3, 3), torch.zeros(1, 9, 6, 6)
    with pytest.raises(RuntimeError, match="grad_output is on meta but features are on cpu"):
        compiled_extension.backward(torch.zeros(1, 4, 6, 6, device="meta"), features, kernels, 3, 2, 1, False, False, False)


def test_environment_variable_selects_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    def compiled_must_not_run(*args, **kwargs):
        raise AssertionError("the compiled op ran although CARAFE_EXP_BACKEND=reference")

    monkeypatch.setattr("carafe_exp.ops.functional.library.reassemble", compiled_must_not_run)
    monkeypatch.setenv(backend_module.BACKEND_ENV, "reference")
    arguments = _good()
    expected = carafe(**arguments, backend="reference")
    torch.testing.assert_close(carafe(**arguments), expected)


def test_failed_build_falls_back_once_or_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = extension.ExtensionBuildError("compiler exploded")
    monkeypatch.setattr(backend_module, "_state", {"loaded": False, "error": failure})
    arguments = _good()
    expected = carafe(**arguments, backend="reference")
    with pytest.warns(RuntimeWarning, match="compiled extension is unavailable.*compiler exploded"):
        torch.testing.assert_close(carafe(**arguments), expected)
    with warnings_as_errors():
        carafe(**arguments, backend="auto")  # the warning is given once per process
    with pytest.raises(extension.ExtensionBuildError, match="backend='compiled'.*compiler exploded"):
        carafe(**arguments, backend="compiled")
    assert backend_module.available_backends() == ("reference",)


class warnings_as_errors:
    """Context manager turning every warning into an error."""

    def __enter__(self) -> None:
        import warnings

        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc: object) -> None:
        self._catcher.__exit__(*exc)


def test_broken_compiler_falls_back_in_a_fresh_process(tmp_path) -> None:
    # A real failed build: an empty cache dir and a compiler that always fails.
    script = textwrap.dedent(
        """
        import warnings, torch
        from carafe_exp.ops import carafe, reassemble_reference, available_backends
        x = torch.randn(1, 2, 3, 3); w = torch.rand(1, 9, 6, 6)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = carafe(x, w, 3, 2)
            carafe(x, w, 3, 2)
        torch.testing.assert_close(out, reassemble_reference(x, w, 3, 2, 1, False))
        messages = [str(w.message) for w in caught if "compiled extension is unavailable" in str(w.message)]
        assert len(messages) == 1, messages
        assert available_backends() == ("reference",)
        try:
            carafe(x, w, 3, 2, backend="compiled")
        except RuntimeError as error:
            print("raised:", type(error).__name__)
        """
    )
    env = {**os.environ, "CARAFE_EXP_EXT_DIR": str(tmp_path), "CXX": "false", "CARAFE_EXP_BACKEND": "auto"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "raised: ExtensionBuildError" in result.stdout

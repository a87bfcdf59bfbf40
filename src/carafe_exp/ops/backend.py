"""Choice of backend for the reassembly operator: the compiled extension or the reference.

``backend`` is None/"auto" (the compiled extension when it builds and loads, otherwise the
reference with one warning per process), "compiled" (raise if it cannot be built) or
"reference". The environment variable CARAFE_EXP_BACKEND sets the default.
"""

from __future__ import annotations

import os
import warnings

import torch

from carafe_exp.errors import ConfigError

BACKEND_ENV = "CARAFE_EXP_BACKEND"
BACKENDS = ("auto", "compiled", "reference")

_state: dict[str, object] = {}


def _try_load() -> bool:
    """Build/load the extension once per process; remember the outcome."""
    # Imported here, not at module level, so that `python -m carafe_exp.ops.extension` does not
    # find the module already imported by the package (runpy warns about that).
    from carafe_exp.ops import extension

    if "loaded" not in _state:
        try:
            extension.load()
            _state["loaded"] = True
        except extension.ExtensionBuildError as error:
            _state["loaded"] = False
            _state["error"] = error
    return bool(_state["loaded"])


# torch.compile runs this once while tracing and bakes the answer into the graph instead of
# tracing the build machinery.
@torch.compiler.assume_constant_result
def compiled_available() -> bool:
    """Whether the compiled extension builds and loads on this machine (builds it if needed)."""
    return _try_load()


def available_backends() -> tuple[str, ...]:
    """The backends usable here: "reference" always, "compiled" when the extension loads."""
    return ("compiled", "reference") if compiled_available() else ("reference",)


def _requested(backend: str | None) -> str:
    name = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto") or "auto"
    if name not in BACKENDS:
        source = "backend" if backend is not None else f"${BACKEND_ENV}"
        # A ConfigError (a ValueError): the setting usually comes from the environment or a config
        # key, and the CLI answers it with one line instead of a traceback from inside training.
        raise ConfigError(f"{source} must be one of {', '.join(BACKENDS)} (or None); got {name!r}")
    return name


def _summary(error: object, limit: int = 300) -> str:
    # The build error carries the whole compiler log; one line of it is enough in a warning.
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    return first_line if len(first_line) <= limit else first_line[: limit - 1] + "…"


@torch.compiler.assume_constant_result
def _warn_fallback() -> bool:
    if not _state.get("warned"):
        _state["warned"] = True
        warnings.warn(
            f"carafe: the compiled extension is unavailable, using the slower pure-PyTorch reference "
            f"({_summary(_state.get('error'))}). Run `python -m carafe_exp.ops.extension --verbose` for the "
            "build log.",
            RuntimeWarning,
            stacklevel=5,  # the caller of carafe() / carafe_down()
        )
    return True


def use_compiled(backend: str | None) -> bool:
    """Resolve ``backend`` to True (compiled extension) or False (reference).

    Raises ValueError for an unknown name and extension.ExtensionBuildError when "compiled"
    is requested but unavailable.
    """
    name = _requested(backend)
    if name == "reference":
        return False
    if compiled_available():
        return True
    if name == "compiled":
        from carafe_exp.ops.extension import ExtensionBuildError

        raise ExtensionBuildError(
            f"backend='compiled' was requested but the CARAFE extension is unavailable: {_state.get('error')}"
        )
    _warn_fallback()
    return False

"""carafe-exp: regenerate the CARAFE / CARAFE++ experiments and run resampling ablations."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("carafe-exp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

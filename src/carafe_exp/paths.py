"""Locate the files shipped beside the code: the Hydra config tree and the C++/CUDA sources.

An installed wheel carries them inside the package (``carafe_exp/conf``, ``carafe_exp/csrc``);
a source checkout (editable install) keeps them at the repository root.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _shipped_dir(name: str) -> Path:
    packaged = Path(str(files("carafe_exp"))) / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"cannot find the {name}/ directory: looked in {packaged} and {checkout}")


def config_dir() -> Path:
    """The Hydra config tree (``conf/``)."""
    return _shipped_dir("conf")


def csrc_dir() -> Path:
    """The C++/CUDA sources of the reassembly operator (``csrc/``)."""
    return _shipped_dir("csrc")

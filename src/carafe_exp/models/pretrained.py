"""Load pretrained ResNet weights: a torchvision weights name from the local hub cache, or a file.

Nothing is downloaded unless the user allows it: a missing torchvision checkpoint fails with
one line saying where it was looked for and how to provide it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from carafe_exp.errors import ConfigError

log = logging.getLogger(__name__)

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "model.", "backbone.body.", "backbone.")


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pth", ".pt", ".ckpt", ".bin")) or Path(weights).exists()


def torchvision_weights(arch: str, name: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights enum ``<Arch>_Weights.<name>`` (``name`` may also be ``DEFAULT``)."""
    try:
        return torchvision.models.get_model_weights(arch)[name] if name != "DEFAULT" else \
            torchvision.models.get_model_weights(arch).DEFAULT
    except KeyError:
        available = [w.name for w in torchvision.models.get_model_weights(arch)]
        raise ConfigError(f"unknown weights {name!r} for {arch}; available: {', '.join(available)} "
                          f"or a local checkpoint path") from None


def _cached_file(weights: torchvision.models.WeightsEnum) -> Path:
    filename = weights.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file, unwrapping the usual containers and prefixes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise ConfigError(f"cannot read weights file {path}: {error}") from error
    for key in _STATE_DICT_KEYS:
        if isinstance(payload, Mapping) and key in payload and isinstance(payload[key], Mapping):
            payload = payload[key]
            break
    if not isinstance(payload, Mapping):
        raise ConfigError(f"weights file {path} holds a {type(payload).__name__}, not a state dict")
    state = dict(payload)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def resolve_weights(arch: str, weights: str, allow_download: bool = False) -> dict[str, torch.Tensor]:
    """State dict for ``weights``: a local path, or a torchvision weights name of ``arch``."""
    if _looks_like_path(weights):
        return load_state_dict_file(weights)
    enum = torchvision_weights(arch, weights)
    cached = _cached_file(enum)
    if cached.is_file():
        return load_state_dict_file(cached)
    if not allow_download:
        raise ConfigError(
            f"{arch} weights {enum} are not in the torch hub cache ({cached}) and runs do not download; "
            f"copy the file there, pass a local path, or set model.backbone.allow_download=true")
    log.info("downloading %s to %s", enum.url, cached)
    return enum.get_state_dict(progress=False, check_hash=True)


def load_matching(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``, skipping tensors whose shapes differ (e.g. a 1000-way fc)."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    missing = sorted(k for k in own if k not in usable)
    if not usable:
        raise ConfigError(f"{what}: none of the checkpoint's {len(state)} tensors match the model")
    module.load_state_dict(usable, strict=False)
    if skipped:
        log.info("%s: skipped tensors with other shapes: %s", what, ", ".join(skipped))
    if missing:
        log.info("%s: %d tensors not in the checkpoint keep their initialisation (e.g. %s)", what, len(missing),
                 ", ".join(missing[:4]))

"""Read pretrained ResNet weights and load them into a (possibly modified) ResNet, strictly.

Sources of ``model.backbone.weights``:

- a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``...), read from the torch hub cache;
  nothing is downloaded unless the user allows it;
- a file: a plain state dict, a ``{"state_dict": ...}`` container, or a Lightning ``.ckpt``
  written by ``task=classification`` (keys ``model.*``) or by ``task=detection`` (the backbone
  trunk ``model.backbone.body.*`` is taken);
- a run or sweep directory (see :mod:`carafe_exp.models.run_checkpoint`).

Loading is strict: tensors the model has and the checkpoint lacks, tensors the checkpoint has
and the model lacks, and tensors of another shape are listed in the log and are an error unless
``strict=False``. The classifier head (``fc.*``) is the one expected exception: a head of
another size (another number of classes) or no head at all keeps its fresh initialisation, and
the log says so; detection and segmentation drop the head anyway.
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
_PREFIXES = ("module.", "model.")
# The ResNet trunk inside a detection checkpoint (torchvision's and ours).
_DETECTION_TRUNK = "backbone.body."
HEAD_PREFIX = "fc."
# Buffers that carry no learned state; old torchvision checkpoints predate them.
# CSAIL's SynchronizedBatchNorm2d also saves the bookkeeping of its running average (derived from
# the running statistics; model.bn_stats=csail restarts it from them), so its files load too.
_IGNORED_SUFFIXES = ("num_batches_tracked", "_tmp_running_mean", "_tmp_running_var", "_running_iter")
_LISTED = 6


def looks_like_path(weights: str) -> bool:
    """Whether ``weights`` names a file or directory rather than a torchvision weights enum member."""
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


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    # A detection checkpoint: keep the ResNet trunk, drop FPN and heads.
    if any(k.startswith(_DETECTION_TRUNK) for k in state):
        state = {k[len(_DETECTION_TRUNK):]: v for k, v in state.items() if k.startswith(_DETECTION_TRUNK)}
    return state


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A ResNet state dict from a checkpoint file, unwrapping containers and prefixes."""
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
    if not isinstance(payload, Mapping) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict of tensors")
    return _strip_prefixes({str(k): v for k, v in payload.items()})


def torchvision_state_dict(arch: str, name: str, allow_download: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's ``arch`` weights ``name`` from the hub cache (or downloaded if allowed)."""
    enum = torchvision_weights(arch, name)
    cached = _cached_file(enum)
    if cached.is_file():
        return load_state_dict_file(cached)
    if not allow_download:
        raise ConfigError(
            f"{arch} weights {enum} are not in the torch hub cache ({cached}) and runs do not download; "
            f"copy the file there, pass a local path, or set model.backbone.allow_download=true")
    log.info("downloading %s to %s", enum.url, cached)
    return enum.get_state_dict(progress=False, check_hash=True)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > _LISTED else shown


def load_pretrained(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, strict: bool = True) -> None:
    """Load ``state`` into ``module``: every tensor must match, except the classifier head ``fc.*``.

    With ``strict=False`` the mismatches are logged as warnings and the matching tensors load.
    """
    own = module.state_dict()

    def ignored(key: str) -> bool:
        return key.endswith(_IGNORED_SUFFIXES)

    def head(key: str) -> bool:
        return key.startswith(HEAD_PREFIX)

    missing = sorted(k for k in own if k not in state and not ignored(k) and not head(k))
    unexpected = sorted(k for k in state if k not in own and not ignored(k) and not head(k))
    reshaped = sorted(k for k in state if k in own and own[k].shape != state[k].shape and not head(k))
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"{what}: none of the checkpoint's {len(state)} tensors match the model")

    head_kept = sorted(k for k in own if head(k) and k not in usable)
    if head_kept:
        log.info("%s: classifier head %s keeps its initialisation (the checkpoint's head has another size "
                 "or is absent)", what, ", ".join(head_kept))
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_listing(unexpected)}")
    if reshaped:
        problems.append("other shape: " + _listing([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                    for k in reshaped]))
    for kind, keys in (("missing from the checkpoint", missing), ("not in the model", unexpected),
                       ("of another shape", reshaped)):
        if keys:
            log.log(logging.ERROR if strict else logging.WARNING, "%s: %d tensors %s: %s", what, len(keys), kind,
                    ", ".join(keys))
    if problems and strict:
        raise ConfigError(f"{what} do not fit the model ({'; '.join(problems)}); use a checkpoint of the same "
                          f"network (e.g. a task=classification run with the same downsampler) or set "
                          f"model.backbone.strict=false to load only the matching tensors")
    module.load_state_dict(usable, strict=False)
    log.info("%s: loaded %d of the model's %d tensors", what, len(usable), len(own))


__all__ = ["HEAD_PREFIX", "load_pretrained", "load_state_dict_file", "looks_like_path", "torchvision_state_dict",
           "torchvision_weights"]

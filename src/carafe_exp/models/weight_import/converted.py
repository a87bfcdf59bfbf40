"""Weights converted to our parameter names, and the strict load that places every tensor.

A format module (see :mod:`carafe_exp.models.weight_import.load`) returns a
:class:`ConvertedWeights`; :func:`load_strictly` puts it into the model. Strict means: every tensor
of the model receives one from the file, every tensor of the file is placed, shapes agree. Anything
else is one :class:`~carafe_exp.errors.ConfigError` line listing what is missing, left over or of
another shape. Tensors a format knowingly drops (SyncBN bookkeeping, a discriminator that the model
being built does not have) are named in ``ignored`` with the reason, and logged, not silently lost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from carafe_exp.errors import ConfigError

log = logging.getLogger(__name__)

_LISTED = 6
# A BatchNorm's count of batches seen: old checkpoints predate it and nothing computed reads it
# (momentum is set), so a file without it loads and the model keeps its own.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


@dataclass
class ConvertedWeights:
    """The tensors of a checkpoint under our parameter names.

    ``state_dict`` maps our names to tensors; ``ignored`` maps groups of the file's tensors that are
    deliberately not loaded to the reason; ``source`` says what the file was (for messages).
    """

    state_dict: dict[str, torch.Tensor]
    source: str
    ignored: dict[str, str] = field(default_factory=dict)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return f"{shown} (+{len(names) - _LISTED} more)" if len(names) > _LISTED else shown


def load_strictly(model: nn.Module, weights: ConvertedWeights, origin: str) -> None:
    """Load ``weights`` into ``model``; any tensor not placed exactly is a one-line error.

    ``origin`` names the config key and the file in messages (``model.weights=/path``).
    """
    expected = model.state_dict()
    given: Mapping[str, torch.Tensor] = weights.state_dict
    missing = [k for k in expected if k not in given and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in given if k not in expected]
    wrong_shape = [f"{k} {tuple(given[k].shape)} vs ours {tuple(v.shape)}" for k, v in expected.items()
                   if k in given and tuple(given[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors of the model are not in it: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} of its tensors have no place in the model: {_listed(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} have another shape: {_listed(wrong_shape)}")
    if problems:
        raise ConfigError(f"{origin} ({weights.source}) does not fit this model: {'; '.join(problems)}")
    loadable = {k: v for k, v in given.items()}
    result = model.load_state_dict(loadable, strict=False)
    # Only the optional counters may remain unset (checked above); say so rather than hide it.
    if result.missing_keys:
        log.info("%s: %d BatchNorm batch counters not in the file keep their value", origin,
                 len(result.missing_keys))
    for group, reason in weights.ignored.items():
        log.info("%s: not loaded, knowingly: %s (%s)", origin, group, reason)
    log.info("%s: loaded %d tensors from %s", origin, len(given), weights.source)

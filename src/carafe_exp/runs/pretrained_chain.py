"""Tables that start from another run's weights refuse to run without them.

CARAFE++ Tables I, III, V, VII, VIII and IX start from backbones pretrained on ImageNet with
their own downsamplers. Writing ``model.backbone.weights: ???`` in the experiment does not force
the user to give them: the experiment is merged after its ``/setting/*``, and OmegaConf keeps the
earlier value (``IMAGENET1K_V1``) when it merges ``???`` onto it, so the run would silently train
from torchvision's weights. Instead an experiment names what it needs in a marker::

    # Weights this table cannot run without, and the experiment whose sweep directory provides them.
    pretrained_chain:
      model.backbone.weights: carafe_pp/table3_pretrain

Each key listed must be given on the command line (any value, ``null`` included, is the user's
choice); otherwise the run is refused in one line naming the key and the pretraining experiment
(or, where the value is not an experiment's name, the text it gives). The check runs before a
single run (:func:`check_pretrained_chain` from the CLI's config checks) and, for a sweep, once
before the first job (:class:`PretrainedChainGuard`, a Hydra callback), so ``-m`` exits 2 with
one line instead of failing every job. ``--cfg job`` runs neither and still prints the config.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from carafe_exp.errors import ConfigError
from carafe_exp.paths import config_dir

MARKER = "pretrained_chain"


def overridden_keys(overrides: Iterable[str]) -> set[str]:
    """The config keys a command line sets (``+key=``, ``++key=``, ``~key`` included)."""
    keys = set()
    for override in overrides:
        key = str(override).split("=", 1)[0].lstrip("+~").strip()
        if key:
            keys.add(key)
    return keys


def required_weights(cfg: DictConfig) -> dict[str, str]:
    """The marker of the composed config: ``{config key: what provides it}`` (empty when none)."""
    node = cfg.get(MARKER) if isinstance(cfg, DictConfig) else None
    if node is None:
        return {}
    plain = OmegaConf.to_container(node, resolve=True)
    if not isinstance(plain, Mapping):
        raise ConfigError(f"{MARKER} must map config keys to the experiment that provides them, got {plain!r}")
    return {str(key): str(value) for key, value in plain.items()}


def is_experiment(name: str) -> bool:
    """Whether ``name`` is an experiment config (``conf/experiment/<name>.yaml``)."""
    return bool(name) and "/" in name and (config_dir() / "experiment" / f"{name}.yaml").is_file()


def how_to_provide(key: str, provider: str) -> str:
    """What the user runs to get ``key``'s value: the pretraining experiment, or the marker's text."""
    if is_experiment(provider):
        return (f"run the pretraining sweep experiment={provider} first (its command: README, 'Regenerate the "
                f"papers') and give {key}=<its sweep dir>")
    return f"{provider}; give {key}=<...>"


def check_pretrained_chain(cfg: DictConfig, overrides: Iterable[str], experiment: str | None = None) -> None:
    """Refuse (ConfigError) a config whose marker names a key the command line does not give."""
    given = overridden_keys(overrides)
    for key, provider in required_weights(cfg).items():
        if key in given:
            continue
        table = f" by experiment={experiment}" if experiment else ""
        raise ConfigError(f"{key} is required{table} (no default: these rows start from pretrained weights that "
                          f"are not torchvision's): {how_to_provide(key, provider)}")


class PretrainedChainGuard(Callback):
    """Hydra callback: before a sweep's first job, refuse it in one line (exit 2) when weights are missing."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
        experiment = OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)
        try:
            check_pretrained_chain(config, list(overrides), experiment)
        except ConfigError as error:
            # Hydra reports a callback's exception as a warning and goes on; SystemExit stops it.
            print(f"carafe-exp: error: {error}", file=sys.stderr)
            sys.exit(2)


__all__ = ["MARKER", "PretrainedChainGuard", "check_pretrained_chain", "how_to_provide", "is_experiment",
           "overridden_keys", "required_weights"]

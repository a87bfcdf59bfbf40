"""Build the model of a config node, as the CLI does, including ``model.weights``.

``model.weights`` (null by default) loads the *whole* model after it is built, from our runs or from
a reference implementation's checkpoint (:mod:`carafe_exp.models.weight_import`); it is not an
argument of the ``build_*`` functions, whose ``backbone.weights`` sets only the ResNet trunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from carafe_exp.models.weight_import import load_model_weights

WEIGHTS_KEY = "weights"


def build_model(model: DictConfig | Mapping[str, Any], upsampler: Any = None, downsampler: Any = None,
                **kwargs: Any) -> nn.Module:
    """``instantiate(model)`` with the resampler nodes, then the whole-model weights if given."""
    node = OmegaConf.create(OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig)
                            else dict(model))
    weights = node.pop(WEIGHTS_KEY, None)
    plain = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
             for k, v in (("upsampler", upsampler), ("downsampler", downsampler))}
    built = instantiate(node, **plain, _convert_="all", **kwargs)
    if weights:
        load_model_weights(built, str(weights))
    return built

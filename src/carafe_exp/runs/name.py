"""A run's name (W&B run name, tables): task, model, and only the resamplers the model really uses.

``name: null`` in ``conf/config.yaml`` asks for this derived name; any string given wins. The
upsampler appears when one of the model's upsampling sites is on, the downsampler when one of
its downsampling sites is on, so a classification run is not named after an upsampler it never
builds. A sweep job adds what its sweep varies, so the jobs of a sweep are told apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Sites that downsample (DESIGN.md: the ResNet backbone's stride-2 places, the inpainting
# encoder's strided convs); every other model site upsamples.
DOWNSAMPLING_SITES = frozenset({"backbone", "encoder"})


def enabled_sites(sites: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """``(upsampling sites on, downsampling sites on)`` of a model's ``sites`` mapping."""
    sites = sites or {}
    up = [name for name, on in sites.items() if on and name not in DOWNSAMPLING_SITES]
    down = [name for name, on in sites.items() if on and name in DOWNSAMPLING_SITES]
    return up, down


def model_description(config: Mapping[str, Any], choices: Mapping[str, Any]) -> dict[str, Any]:
    """Task, model, backbone depth and the resamplers at their enabled sites: what a checkpoint holds."""
    model = config.get("model") or {}
    up_sites, down_sites = enabled_sites(model.get("sites"))
    backbone = model.get("backbone") if isinstance(model.get("backbone"), Mapping) else {}
    upsampler = (config.get("upsampler") or {}).get("name") if up_sites else None
    downsampler = (config.get("downsampler") or {}).get("name") if down_sites else None
    return {
        "task": (config.get("task") or {}).get("name"),
        "model": choices.get("model") or str(model.get("_target_", "?")).rsplit(".", 1)[-1],
        "depth": backbone.get("depth"),
        "upsampler": upsampler,
        "upsampler_sites": up_sites if upsampler else [],
        "downsampler": downsampler,
        "downsampler_sites": down_sites if downsampler else [],
    }


def run_name(config: Mapping[str, Any], choices: Mapping[str, Any], swept: Sequence[str] = ()) -> str:
    """``detection-faster_rcnn-carafe``, ``classification-resnet-carafe``; sweep jobs add ``[k_up=3]``-style parts."""
    description = model_description(config, choices)
    parts = [str(description["task"]), str(description["model"])]
    parts += [str(description[kind]) for kind in ("upsampler", "downsampler") if description[kind]]
    if choices.get("row"):
        parts.append(str(choices["row"]).rsplit("/", 1)[-1])
    name = "-".join(parts)
    return f"{name}[{','.join(swept)}]" if swept else name

"""The guided-upsampler contract: ``forward(x, guide=None)`` and the class attribute ``requires_guide``.

FADE, SAPA and FreqFusion compute their kernels from the high-resolution feature as well as from
the map they upsample. Such a class sets ``requires_guide = True``; a model site that has a guide
(every FPN top-down step: the lateral of the target level, before the add) passes it, and a site
that has none refuses the class when the model is built (:func:`refuse_guided_at`), in one line
naming the site. A guide-free upsampler (``requires_guide`` absent or False) is called as
``module(x)``, so classes written before guides existed keep working.

Guided modules are ×2 only; :func:`check_guide` refuses a guide whose size is not exactly twice
the input's (the models pad their input so that every ×2 step is exact).
"""

from __future__ import annotations

import torch
from torch import nn

from carafe_exp.errors import ConfigError


def requires_guide(module_or_class: nn.Module | type) -> bool:
    """Whether an upsampler (instance or class) needs the high-resolution guide."""
    return bool(getattr(module_or_class, "requires_guide", False))


def refuse_guided_at(cls: type, name: str, site: str | None) -> None:
    """Raise a one-line ConfigError: ``cls`` needs a guide and ``site`` has none."""
    where = site or "this site"
    raise ConfigError(f"upsampler={name} needs a guide (the high-resolution feature it upsamples towards) and "
                      f"{where} has none; guided upsamplers run at FPN top-down steps only (model.sites.fpn)")


def check_guide(owner: str, x: torch.Tensor, guide: torch.Tensor | None, scale: int) -> torch.Tensor:
    """Return ``guide`` after checking that it exists and is (N, *, s·H, s·W) for ``x`` (N, C, H, W)."""
    if guide is None:
        # A silent guide-free fallback would change the method being compared (spec §7).
        raise ConfigError(f"{owner} needs guide= (the high-resolution feature); this call passed none")
    expected = (scale * x.shape[-2], scale * x.shape[-1])
    if guide.dim() != 4 or guide.shape[0] != x.shape[0] or tuple(guide.shape[-2:]) != expected:
        raise ConfigError(f"{owner}: guide of shape {tuple(guide.shape)} does not match input {tuple(x.shape)}: it "
                          f"must be (N, C_guide, {scale}·H, {scale}·W) = {expected}; pad the image so every ×2 step "
                          f"is exact")
    return guide


def upsample_with_guide(module: nn.Module, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
    """``module(x, guide=guide)`` for a guided upsampler, ``module(x)`` for any other."""
    if requires_guide(module):
        return module(x, guide=guide)
    return module(x)


__all__ = ["check_guide", "refuse_guided_at", "requires_guide", "upsample_with_guide"]

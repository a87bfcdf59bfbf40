"""Named inpainting training recipes: each one source's losses, loss weights and discriminator, unmixed.

The papers state the generator (Global&Local's), one PatchGAN-style discriminator "on the inpainted
region" (CARAFE supplement §1, citing Li & Wand), Adam (lr 1e-4, betas (0.5, 0.9)) and batch 32; they
give no losses or weights. ``task.module.recipe`` picks one source for everything they leave open:

- ``global_local`` (default; the papers' networks): mmagic's Global&Local losses,
  ``configs/_base_/models/base_gl.py``: ``loss_gan=dict(gan_type='vanilla', loss_weight=0.001)`` and
  ``loss_l1_hole=dict(loss_weight=1.0)``, no valid-pixel L1 (``GLInpaintor.generator_loss``). GL's
  own global + local discriminators are the part the papers replace: one PatchGAN on the inpainted
  region, pix2pix's ``NLayerDiscriminator`` on the completed image (the vanilla GAN loss is pix2pix's
  own pairing), its patch scores weighted by their share of hole pixels.
- ``deepfill_v2``: mmagic's DeepFill v2, ``configs/_base_/models/base_deepfillv2.py``: hinge loss at
  weight 0.1, L1 on hole and valid pixels at weight 1 each, and its SN-PatchGAN
  (``MultiLayerDiscriminator``, six 5×5 stride-2 spectral-norm convs, ``disc_input_with_mask=True``),
  every patch score counted alike (``GANLoss`` averages the whole map).

Both keep the papers' optimiser. Any of these keys set explicitly overrides its recipe value, and
the run says so at start (an ablation, no longer the named recipe).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from carafe_exp.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """What a recipe fixes: the adversarial loss and its weight, the L1 weights, the discriminator."""

    adversarial_loss: str
    adversarial_weight: float
    adversarial_region: str
    l1_hole_weight: float
    l1_valid_weight: float
    discriminator_kind: str
    discriminator_with_mask: bool


RECIPES: dict[str, Recipe] = {
    "global_local": Recipe(adversarial_loss="vanilla", adversarial_weight=0.001, adversarial_region="hole",
                           l1_hole_weight=1.0, l1_valid_weight=0.0, discriminator_kind="nlayer",
                           discriminator_with_mask=False),
    "deepfill_v2": Recipe(adversarial_loss="hinge", adversarial_weight=0.1, adversarial_region="all",
                          l1_hole_weight=1.0, l1_valid_weight=1.0, discriminator_kind="sn_patchgan",
                          discriminator_with_mask=True),
}
DEFAULT_RECIPE = "global_local"
_LOSS_KEYS = ("adversarial_loss", "adversarial_weight", "adversarial_region", "l1_hole_weight", "l1_valid_weight")


def resolve_recipe(name: str, losses: Mapping[str, Any], discriminator: Mapping[str, Any] | None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(loss settings, discriminator settings) of recipe ``name``, with the non-null ``losses`` keys and
    ``discriminator`` entries given explicitly taking precedence (each such departure logged)."""
    if name not in RECIPES:
        raise ConfigError(f"task.module.recipe must be one of {list(RECIPES)}, got {name!r}")
    recipe = RECIPES[name]
    resolved: dict[str, Any] = {}
    departures = []
    for key in _LOSS_KEYS:
        default = getattr(recipe, key)
        given = losses.get(key)
        resolved[key] = default if given is None else given
        if given is not None and given != default:
            departures.append(f"task.module.{key}={given} (recipe: {default})")
    disc = dict(discriminator or {})
    for key, default in (("kind", recipe.discriminator_kind), ("with_mask", recipe.discriminator_with_mask)):
        if disc.get(key) is None:
            disc[key] = default
        elif disc[key] != default:
            departures.append(f"task.module.discriminator.{key}={disc[key]} (recipe: {default})")
    if departures:
        log.warning("task.module.recipe=%s with %s: not the %s recipe any more", name, ", ".join(departures), name)
    return resolved, disc

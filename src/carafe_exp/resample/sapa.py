"""SAPA (Lu et al., NeurIPS 2022): similarity-aware point affiliation, a guided ×2 upsampler.

Each high-res guide point y_p is compared with the k×k low-res neighbours x_n around ⌊p/s⌋;
``w_pn = softmax_n(sim(y_p, x_n))`` and ``out_p = Σ_n w_pn x_n`` over the **raw** decoder
features (no value projection). Following the official module (poppinace/sapa ``SAPA.py``,
spec newer-upsamplers §2):

- ``variant="b"`` (SAPA-B, default, low-rank bilinear): ``q = Linear(C_g→d)(LN(y))``,
  ``k = Linear(C→d)(LN(x))``, sim = qᵀk, no 1/√d scaling;
- ``variant="g"`` (SAPA-G, gated bilinear, ``SAPAExp(q_mode='gate')``): ``g = up(sigmoid(
  Linear(C→1)(LN(x))))``, ``q = g·q_y(LN(y)) + (1−g)·q_x(up(x))`` (q_x sees un-normalised x).

LayerNorm over channels (channels-last, as the official code), Linear layers trunc-normal
(std .02) with zero bias. Out-of-range neighbours get logit 0 and value 0. The similarity is
:func:`~carafe_exp.resample.sapa_similarity.neighbour_similarity` (memory-lean), the aggregation
the project's CARAFE op with groups 1 (the official ``atn`` op has the same index order and
zero padding). Defaults: k_up=5, d=64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp import ops
from carafe_exp.resample.checks import check_choice, check_odd_kernel, check_positive_int
from carafe_exp.resample.fade import check_guided_scale
from carafe_exp.resample.guided import check_guide
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.sapa_similarity import neighbour_similarity

SAPA_VARIANTS = ("b", "g")


def _trunc_normal_linear(in_features: int, out_features: int) -> nn.Linear:
    linear = nn.Linear(in_features, out_features)
    nn.init.trunc_normal_(linear.weight, std=0.02)
    nn.init.zeros_(linear.bias)
    return linear


def _channels_last(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a channels-last module (LayerNorm, Linear) to an (N, C, H, W) map."""
    return module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@register_upsampler("sapa")
class SapaUpsample(nn.Module):
    """SAPA-B / SAPA-G guided upsampler (see module docstring).

    Config keys: variant, k_up, embedding_dim, guide_channels.
    """

    requires_guide = True

    def __init__(self, channels: int, scale: int, variant: str = "b", k_up: int = 5, embedding_dim: int = 64,
                 guide_channels: int | None = None) -> None:
        super().__init__()
        check_guided_scale("sapa", scale)
        check_choice("sapa", "variant", variant, SAPA_VARIANTS)
        check_odd_kernel("sapa", "k_up", k_up)
        check_positive_int("sapa", "embedding_dim", embedding_dim)
        guide_channels = channels if guide_channels is None else guide_channels
        check_positive_int("sapa", "guide_channels", guide_channels)
        self.scale = scale
        self.variant = variant
        self.kernel_size = k_up
        self.norm_guide = nn.LayerNorm(guide_channels)
        self.norm_x = nn.LayerNorm(channels)
        self.q = _trunc_normal_linear(guide_channels, embedding_dim)
        self.k = _trunc_normal_linear(channels, embedding_dim)
        if variant == "g":
            self.gate = _trunc_normal_linear(channels, 1)
            self.q_x = _trunc_normal_linear(channels, embedding_dim)

    def queries(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """The high-res queries (N, d, 2H, 2W)."""
        q = _channels_last(self.q, _channels_last(self.norm_guide, guide))
        if self.variant == "b":
            return q
        gate = torch.sigmoid(_channels_last(self.gate, _channels_last(self.norm_x, x)))
        gate = F.interpolate(gate, scale_factor=self.scale, mode="nearest")
        q_x = _channels_last(self.q_x, F.interpolate(x, scale_factor=self.scale, mode="nearest"))
        return gate * q + (1 - gate) * q_x

    def kernels(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Normalised affiliation weights (N, k_up², 2H, 2W) in the CARAFE op's layout."""
        keys = _channels_last(self.k, _channels_last(self.norm_x, x))
        logits = neighbour_similarity(self.queries(x, guide), keys, self.kernel_size, self.scale)
        return F.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        guide = check_guide("sapa", x, guide, self.scale)
        return ops.carafe(x, self.kernels(x, guide), self.kernel_size, self.scale, groups=1)


__all__ = ["SAPA_VARIANTS", "SapaUpsample"]

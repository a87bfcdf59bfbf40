"""Detail-preserving pooling (DPP; Saeedan, Weber, Goesele, Roth, CVPR 2018), a downsampler of CARAFE++ Table III.

DPP is a weighted average over each pooling window whose weights grow with how much a pixel
deviates from a linearly downscaled version of the window, so details (edges, spikes) are kept
instead of being averaged away. Follows the authors' PyTorch code (visinf, "DPP" module):

    Ĩ   = nearest-upsampled s×s average pool of I            (the linear downscaling)
    d   = (I − Ĩ)² + ε                                      (ε = 1e-3 keeps flat windows finite)
    w   = (d / avg_window(d))^{exp(λ_c)} + exp(α_c)          (per-channel learned λ, α; exp keeps them > 0)
    out = avg_window(I·w) / avg_window(w)

Pooling windows are s×s with stride s; the last window of an odd-sized map is partial
(``ceil_mode``) and averages only its valid pixels, so the output is ⌈H/s⌉ × ⌈W/s⌉.
λ and α are stored in log space and initialised uniform in [0, 1) as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.registry import register_downsampler

DIFFERENCE_EPS = 1e-3


@register_downsampler("dpp")
class DetailPreservingPool(nn.Module):
    """Detail-preserving pooling over s×s windows with per-channel learned α, λ (see module docstring)."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.log_lambda = nn.Parameter(torch.rand(channels))
        self.log_alpha = nn.Parameter(torch.rand(channels))

    def _window_mean(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.scale, self.scale, ceil_mode=True)

    def _back_to_input(self, pooled: torch.Tensor, height: int, width: int) -> torch.Tensor:
        upsampled = pooled.repeat_interleave(self.scale, dim=2).repeat_interleave(self.scale, dim=3)
        return upsampled[..., :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        linear = self._back_to_input(self._window_mean(x), height, width)
        deviation = (x - linear) ** 2 + DIFFERENCE_EPS
        relative = deviation / self._back_to_input(self._window_mean(deviation), height, width)
        exponent = self.log_lambda.exp().view(1, -1, 1, 1)
        weights = relative.pow(exponent) + self.log_alpha.exp().view(1, -1, 1, 1)
        return self._window_mean(x * weights) / self._window_mean(weights)

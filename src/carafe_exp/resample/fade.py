"""FADE (Lu et al., ECCV 2022; IJCV 2024): kernels from the decoder *and* the high-res encoder feature.

A guided ×2 upsampler (``requires_guide``): ``forward(x, guide)`` with ``x`` the low-res decoder
map (N, C, H, W) and ``guide`` the high-res encoder/skip map (N, C_g, 2H, 2W). Following the
official code (poppinace/fade; spec newer-upsamplers §1):

- compressors: ``E = conv1x1(guide)`` (C_g→c_m, bias), ``D = conv1x1(x)`` (C→c_m, no bias);
- kernels ``K = softmax_k²( conv3x3(E) + nearest_up×2(conv3x3(D)) )`` with one shared
  ``content_encoder`` (c_m→k_up², bias), so its bias is added twice;
- output ``carafe(x, K, k_up, 2)`` — the project's CARAFE op does the reassembly;
- optional gate ``G = sigmoid(nearest_up×2(conv1x1(x → 1)))``, ``out = G·guide + (1−G)·carafe``.

``form="ijcv"`` (default; ``FADE_L2H.py``, what both official integration repos build) runs the
encoder conv at high resolution. ``form="eccv"`` is the ECCV "semi-shift" computation
(``FADE_H2L.py``): four stride-2 convs of E, zero-padded ``[l,r,t,b] = [1,0,1,0], [0,1,1,0],
[1,0,0,1], [0,1,0,1]``, one per sub-pixel position, rearranged depth-to-space. Both give the
same kernels for the same weights (a stride-2 window of the shifted padding is the 3×3 window
centred on that sub-pixel); they differ in cost and in the initialisation (ECCV: Xavier-normal
encoder, IJCV: Xavier-uniform).

``gating`` defaults to False: at FPN/UperNet sites the model adds the lateral after the
upsampler, so ``G·lateral`` would count it twice; the official integration turns it off there.
At C = 256 the IJCV form has 16,448 + 16,384 + 14,425 = 47,257 parameters (+257 with the gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp import ops
from carafe_exp.resample.checks import ResamplerArgumentError, check_choice, check_odd_kernel, check_positive_int
from carafe_exp.resample.guided import check_guide
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.weight_init import xavier_uniform_init

FADE_FORMS = ("ijcv", "eccv")
# ECCV semi-shift: zero padding (left, right, top, bottom) whose stride-2 conv gives sub-pixel (a, b),
# in PixelShuffle's channel order (0,0), (0,1), (1,0), (1,1).
SEMI_SHIFT_PADDINGS = ((1, 0, 1, 0), (0, 1, 1, 0), (1, 0, 0, 1), (0, 1, 0, 1))


def check_guided_scale(owner: str, scale: int) -> None:
    """Guided upsamplers are ×2 only (their kernels and gates hard-code the factor)."""
    if scale != 2:
        raise ResamplerArgumentError(owner, "scale", scale, "must be 2 (guided upsamplers are ×2 only)")


@register_upsampler("fade")
class FadeUpsample(nn.Module):
    """FADE: guided content-aware ×2 upsampling (see module docstring).

    Config keys: form, k_up, k_encoder, c_m, gating, guide_channels.
    """

    requires_guide = True

    def __init__(self, channels: int, scale: int, form: str = "ijcv", k_up: int = 5, k_encoder: int = 3,
                 c_m: int = 64, gating: bool = False, guide_channels: int | None = None) -> None:
        super().__init__()
        check_guided_scale("fade", scale)
        check_choice("fade", "form", form, FADE_FORMS)
        check_odd_kernel("fade", "k_up", k_up)
        check_odd_kernel("fade", "k_encoder", k_encoder)
        check_positive_int("fade", "c_m", c_m)
        guide_channels = channels if guide_channels is None else guide_channels
        check_positive_int("fade", "guide_channels", guide_channels)
        if gating and guide_channels != channels:
            raise ResamplerArgumentError("fade", "guide_channels", guide_channels,
                                         f"must equal channels={channels} with gating (out = G·guide + ...)")
        if form == "eccv" and k_encoder != 3:
            raise ResamplerArgumentError("fade", "k_encoder", k_encoder, "must be 3 in the ECCV semi-shift form")
        self.scale = scale
        self.form = form
        self.kernel_size = k_up
        self.guide_compressor = nn.Conv2d(guide_channels, c_m, 1)
        self.compressor = nn.Conv2d(channels, c_m, 1, bias=False)
        self.content_encoder = nn.Conv2d(c_m, k_up * k_up, k_encoder, padding=k_encoder // 2)
        for conv in (self.guide_compressor, self.compressor, self.content_encoder):
            xavier_uniform_init(conv)
        if form == "eccv":
            nn.init.xavier_normal_(self.content_encoder.weight)
        self.gate: nn.Conv2d | None = nn.Conv2d(channels, 1, 1) if gating else None
        if self.gate is not None:
            xavier_uniform_init(self.gate)

    def _guide_logits(self, encoded: torch.Tensor) -> torch.Tensor:
        if self.form == "ijcv":
            return self.content_encoder(encoded)
        sub_pixels = [F.conv2d(F.pad(encoded, padding), self.content_encoder.weight, self.content_encoder.bias,
                               stride=2) for padding in SEMI_SHIFT_PADDINGS]
        # (N, 4, k², H, W) → (N, k²·4, H, W) with sub-pixel last, the channel order PixelShuffle expects.
        stacked = torch.stack(sub_pixels, dim=2).flatten(1, 2)
        return F.pixel_shuffle(stacked, 2)

    def kernels(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Normalised reassembly kernels (N, k_up², 2H, 2W)."""
        guide_logits = self._guide_logits(self.guide_compressor(guide))
        decoder_logits = F.interpolate(self.content_encoder(self.compressor(x)), scale_factor=2, mode="nearest")
        return F.softmax(guide_logits + decoder_logits, dim=1)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        guide = check_guide("fade", x, guide, self.scale)
        out = ops.carafe(x, self.kernels(x, guide), self.kernel_size, self.scale, groups=1)
        if self.gate is None:
            return out
        gate = torch.sigmoid(F.interpolate(self.gate(x), scale_factor=2, mode="nearest"))
        return gate * guide + (1 - gate) * out


__all__ = ["FADE_FORMS", "FadeUpsample", "check_guided_scale"]

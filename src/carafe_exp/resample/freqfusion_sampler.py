"""FreqFusion's offset resampler (``LocalSimGuidedSampler``): DySample-style offsets from local similarity.

After FreqFusion's low-pass ×2 upsampling ``lr_up``, the official detection configs
(``feature_resample=True``) resample ``lr_up`` once more at learned positions (Linwei-Chen/
FreqFusion ``FreqFusion.py``; spec newer-upsamplers §3). From the compressed high-res map ``chr``
(after FreqFusion's high-pass enhancement) and the compressed low-res map ``clr``:

- each is GroupNorm'ed (c_m / 8 groups) and concatenated with its local cosine similarity: the
  similarity of every pixel with its 8 neighbours of a 3×3 window at dilation 2, zero outside;
- offsets per output pixel and channel group (4 groups), in low-res pixel units:
  ``(conv(clr') + unshuffle(conv_hr(chr'))) · sigmoid(conv_s(clr') + unshuffle(conv_s_hr(chr')))``
  with 3×3 convs (FreqFusion's encoder kernel), the high-res terms pixel-unshuffled to low-res;
- ``lr_up`` is sampled bilinearly (border padding) at the bilinear ×2 position of each output
  pixel plus its offset, the offset counting low-res pixels (so 2 pixels of ``lr_up`` per unit).

With zero offsets the sampling returns ``lr_up`` unchanged. Every conv is Xavier-uniform with
zero bias: the sampler's own N(0, 0.001) / zero initialisation is overwritten by FreqFusion's
``init_weights``, which re-initialises every Conv2d inside the module, the sampler's included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.sampling import coordinate_dtype, sample_bilinear, upsampling_base_coords
from carafe_exp.resample.weight_init import xavier_uniform_init

SIMILARITY_WINDOW = 3
SIMILARITY_DILATION = 2
SCALE = 2


def local_cosine_similarity(x: torch.Tensor, window: int = SIMILARITY_WINDOW, dilation: int = SIMILARITY_DILATION,
                            eps: float = 1e-8) -> torch.Tensor:
    """(N, window²−1, H, W): cosine similarity of each pixel with its neighbours, row-major, centre left out.

    Neighbours outside the map are zero vectors (similarity 0), as the official ``F.unfold`` form
    with zero padding; this form keeps no window²-times-larger copy of ``x`` for backward.
    """
    height, width = x.shape[-2:]
    unit = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)
    reach = (window // 2) * dilation
    padded = F.pad(unit, (reach, reach, reach, reach))
    similarities = []
    for row in range(window):
        for column in range(window):
            if row == column == window // 2:
                continue
            top, left = row * dilation, column * dilation
            similarities.append((unit * padded[:, :, top:top + height, left:left + width]).sum(dim=1))
    return torch.stack(similarities, dim=1)


class LocalSimilaritySampler(nn.Module):
    """Resample FreqFusion's ``lr_up`` at offsets predicted from both compressed maps (module docstring)."""

    def __init__(self, compressed_channels: int, groups: int = 4, kernel_size: int = 3, norm: bool = True) -> None:
        super().__init__()
        features = compressed_channels + SIMILARITY_WINDOW ** 2 - 1
        low_res_out, high_res_out = 2 * groups * SCALE ** 2, 2 * groups
        padding = kernel_size // 2
        self.groups = groups
        self.norm_guide = self._norm(compressed_channels, norm)
        self.norm_input = self._norm(compressed_channels, norm)
        self.offset = nn.Conv2d(features, low_res_out, kernel_size, padding=padding)
        self.scope = nn.Conv2d(features, low_res_out, kernel_size, padding=padding)
        self.guide_offset = nn.Conv2d(features, high_res_out, kernel_size, padding=padding)
        self.guide_scope = nn.Conv2d(features, high_res_out, kernel_size, padding=padding)
        for conv in (self.offset, self.scope, self.guide_offset, self.guide_scope):
            xavier_uniform_init(conv)

    @staticmethod
    def _norm(channels: int, enabled: bool) -> nn.Module:
        return nn.GroupNorm(channels // 8, channels) if enabled else nn.Identity()

    def offsets(self, compressed_guide: torch.Tensor, compressed_x: torch.Tensor) -> torch.Tensor:
        """Offsets (N, 2·groups·4, H, W) in low-res pixels: channel (xy, group, sub-pixel), as PixelShuffle reads."""
        guide = self.norm_guide(compressed_guide)
        low_res = self.norm_input(compressed_x)
        guide = torch.cat([guide, local_cosine_similarity(guide)], dim=1)
        low_res = torch.cat([low_res, local_cosine_similarity(low_res)], dim=1)
        direction = self.offset(low_res) + F.pixel_unshuffle(self.guide_offset(guide), SCALE)
        scope = self.scope(low_res) + F.pixel_unshuffle(self.guide_scope(guide), SCALE)
        return direction * torch.sigmoid(scope)

    def forward(self, upsampled: torch.Tensor, compressed_guide: torch.Tensor,
                compressed_x: torch.Tensor) -> torch.Tensor:
        batch, channels, out_h, out_w = upsampled.shape
        height, width = compressed_x.shape[-2:]
        offsets = F.pixel_shuffle(self.offsets(compressed_guide, compressed_x), SCALE)
        offsets = offsets.view(batch, 2, self.groups, out_h, out_w).transpose(1, 2)
        offsets = offsets.to(coordinate_dtype(upsampled.dtype))
        base = upsampling_base_coords(height, width, SCALE, dtype=offsets.dtype, device=upsampled.device)
        low_res_positions = base.view(1, 1, 2, out_h, out_w) + offsets
        # Low-res pixel p sits at pixel SCALE·p + (SCALE − 1)/2 of the ×SCALE map (align_corners=False).
        positions = (SCALE * low_res_positions + (SCALE - 1) / 2).reshape(batch * self.groups, 2, out_h, out_w)
        grouped = upsampled.reshape(batch * self.groups, channels // self.groups, out_h, out_w)
        return sample_bilinear(grouped, positions).view(batch, channels, out_h, out_w)


__all__ = ["LocalSimilaritySampler", "local_cosine_similarity"]

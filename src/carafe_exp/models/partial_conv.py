"""The partial convolution of Liu et al. (ECCV 2018), as NVIDIA's official ``PartialConv2d`` computes it.

With ``M`` the single-channel validity mask (1 = known pixel, 0 = hole: the opposite polarity of
the inpainting task's hole mask) and ``1`` a k×k window of ones:

    M' = clamp(conv(M, 1), 0, 1)
    out = (W·(X⊙M))·k²/(conv(M, 1) + 1e-8) + b   where M' = 1, else 0

(NVIDIA/partialconv ``models/partialconv2d.py``, single-channel mask, ``return_mask=True``).
Zero padding counts as missing, so border windows are renormalised too. The mask carries no
gradient, as in the official module. Unlike it, this layer never caches a mask: the mask is a
required argument, so a forward can never silently reuse the previous batch's holes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# NVIDIA's constant: keeps the ratio finite in windows with no valid pixel (there M' = 0 anyway).
RATIO_EPS = 1e-8


class PartialConv2d(nn.Conv2d):
    """``nn.Conv2d`` with NVIDIA's partial-convolution rule; ``forward(x, mask) -> (out, new_mask)``.

    ``mask`` is (N, 1, H, W) with 1 for valid pixels; it may be soft (values in [0, 1]), as the
    masks carried through CARAFE kernels are, and the same formulas then apply unchanged.
    """

    def forward(  # type: ignore[override]
            self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
            raise ValueError(f"PartialConv2d: mask must be (N, 1, H, W) matching x {tuple(x.shape)}, "
                             f"got {tuple(mask.shape)}")
        window_area = self.kernel_size[0] * self.kernel_size[1]
        # The mask arithmetic stays in float32 whatever the features' precision: in float16 the
        # 1e-8 guard rounds to 0, an empty window gives k²/0 · 0 = NaN, and the NaN spreads
        # through the whole network (trainer.precision=16-mixed).
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            mask = mask.float()
            ones = torch.ones(1, 1, *self.kernel_size, device=x.device)
            valid_count = F.conv2d(mask, ones, stride=self.stride, padding=self.padding, dilation=self.dilation)
            new_mask = valid_count.clamp(0.0, 1.0)
            ratio = window_area / (valid_count + RATIO_EPS) * new_mask
        out = F.conv2d(x * mask.to(x.dtype), self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        out = out * ratio.to(out.dtype)
        if self.bias is not None:
            # NVIDIA's order, (raw - b)·ratio + b then ×M': identical for binary masks; for soft
            # masks (CARAFE-carried) it is what the official module would compute.
            out = (out + self.bias.view(1, -1, 1, 1)) * new_mask.to(out.dtype)
        return out, new_mask

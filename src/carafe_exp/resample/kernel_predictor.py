"""The CARAFE / CARAFE++ kernel prediction module: channel compressor, content encoder, kernel normaliser.

Layout of the predicted kernels is the one ``carafe_exp.ops`` consumes: channel
``g·k² + (dy+r)·k + (dx+r)`` holds the weight of neighbour (dy, dx) for channel group ``g``.

- Channel compressor: 1×1 conv C→c_m (``c_m=None`` removes it, CARAFE Table 8 "N/A"). With
  ``compressor_norm`` it is followed by BN+ReLU and loses its bias, as mmcv's ConvModule does
  (CARAFE++ §5.1 uses this in classification backbones).
- Content encoder: k_enc×k_enc conv. Upsampling: c_m → groups·k²·s² channels, rearranged by
  PixelShuffle(s) into (groups·k², sH, sW) — mmcv's ``CARAFEPack`` layout. Downsampling: c_m →
  groups·k² with stride s, giving ⌈H/s⌉ × ⌈W/s⌉.
- Kernel normaliser over each k×k kernel: ``softmax`` (default), ``sigmoid``, ``sigmoid_norm``
  (sigmoid divided by its sum) — CARAFE Table 10.
- Initialisation as mmcv: Xavier-uniform convs, encoder N(0, 0.001), zero biases. The encoder
  therefore starts near zero and softmax kernels start near uniform (a k×k box filter).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.resample.checks import check_choice, check_divides, check_odd_kernel, check_positive_int
from carafe_exp.resample.weight_init import normal_init, xavier_uniform_init

NORMALIZERS = ("softmax", "sigmoid", "sigmoid_norm")


def normalize_kernels(logits: torch.Tensor, kernel_size: int, groups: int, normalizer: str) -> torch.Tensor:
    """Normalise raw kernels (N, groups·k², h, w) over each group's k² taps with ``normalizer``."""
    check_choice("normalize_kernels", "normalizer", normalizer, NORMALIZERS)
    batch, channels, height, width = logits.shape
    taps = logits.view(batch, groups, kernel_size * kernel_size, height, width)
    if normalizer == "softmax":
        kernels = F.softmax(taps, dim=2)
    elif normalizer == "sigmoid":
        kernels = torch.sigmoid(taps)
    else:
        gates = torch.sigmoid(taps)
        kernels = gates / gates.sum(dim=2, keepdim=True)
    return kernels.reshape(batch, channels, height, width)


class CarafeKernelPredictor(nn.Module):
    """Predict normalised reassembly kernels from the input feature map (see module docstring).

    ``direction="up"`` returns (N, groups·k², s·H, s·W); ``direction="down"`` returns
    (N, groups·k², ⌈H/s⌉, ⌈W/s⌉).
    """

    def __init__(
        self,
        channels: int,
        scale: int,
        kernel_size: int = 5,
        encoder_kernel_size: int = 3,
        compressed_channels: int | None = 64,
        normalizer: str = "softmax",
        groups: int = 1,
        compressor_norm: bool = False,
        direction: Literal["up", "down"] = "up",
    ) -> None:
        super().__init__()
        owner = f"carafe kernel predictor ({direction})"
        check_choice(owner, "direction", direction, ("up", "down"))
        check_odd_kernel(owner, "k_up" if direction == "up" else "k_down", kernel_size)
        check_odd_kernel(owner, "k_encoder", encoder_kernel_size)
        check_choice(owner, "normalizer", normalizer, NORMALIZERS)
        check_positive_int(owner, "groups", groups)
        check_divides(owner, "groups", groups, channels)
        if compressed_channels is not None:
            check_positive_int(owner, "c_m", compressed_channels)
        self.scale = scale
        self.kernel_size = kernel_size
        self.groups = groups
        self.normalizer = normalizer
        self.direction = direction

        if compressed_channels is None:
            self.compressor: nn.Module = nn.Identity()
            encoder_in = channels
        else:
            conv = nn.Conv2d(channels, compressed_channels, 1, bias=not compressor_norm)
            xavier_uniform_init(conv)
            if compressor_norm:
                self.compressor = nn.Sequential(conv, nn.BatchNorm2d(compressed_channels), nn.ReLU(inplace=True))
            else:
                self.compressor = conv
            encoder_in = compressed_channels

        kernel_channels = groups * kernel_size * kernel_size
        if direction == "up":
            self.encoder = nn.Conv2d(encoder_in, kernel_channels * scale * scale, encoder_kernel_size,
                                     padding=encoder_kernel_size // 2)
        else:
            # Odd kernel, padding k//2, stride s: output floor((H-1)/s)+1 = ceil(H/s), the downsampler contract.
            self.encoder = nn.Conv2d(encoder_in, kernel_channels, encoder_kernel_size, stride=scale,
                                     padding=encoder_kernel_size // 2)
        normal_init(self.encoder, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.encoder(self.compressor(x))
        if self.direction == "up" and self.scale > 1:
            logits = F.pixel_shuffle(logits, self.scale)
        return normalize_kernels(logits, self.kernel_size, self.groups, self.normalizer)

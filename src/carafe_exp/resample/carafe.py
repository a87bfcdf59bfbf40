"""CARAFE (ICCV 2019) and CARAFE++ (TPAMI) as resamplers: kernel predictor + reassembly op.

The reassembly itself is ``carafe_exp.ops.carafe`` / ``carafe_down``; this file only wires the
predicted kernels into it. At C=256, s=2 with the defaults (k_up=5, k_encoder=3, c_m=64) the
upsampler costs 2(C+1)c_m + 2(c_m·k_enc²+1)s²k_up² + 2s²k_up²·C = 199,496 FLOPs per input pixel
and 74,148 params (CARAFE Table 2: 199k, 74k).
"""

from __future__ import annotations

import torch
from torch import nn

from carafe_exp import ops
from carafe_exp.ops.backend import BACKENDS
from carafe_exp.resample.checks import check_choice
from carafe_exp.resample.kernel_predictor import CarafeKernelPredictor
from carafe_exp.resample.registry import register_downsampler, register_upsampler


@register_upsampler("carafe")
class CarafeUpsample(nn.Module):
    """Content-aware ×s upsampling (CARAFE).

    Config keys: k_up, k_encoder, c_m, normalizer, groups, compressor_norm.

    ``backend`` selects the reassembly implementation (None: ``carafe_exp.ops`` default).
    """

    def __init__(
        self,
        channels: int,
        scale: int,
        k_up: int = 5,
        k_encoder: int = 3,
        c_m: int | None = 64,
        normalizer: str = "softmax",
        groups: int = 1,
        compressor_norm: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        # Checked here, not at the first forward deep inside a training step.
        check_choice("carafe (up)", "backend", backend, (None, *BACKENDS))
        self.scale = scale
        self.kernel_size = k_up
        self.groups = groups
        self.backend = backend
        self.kernel_predictor = CarafeKernelPredictor(
            channels, scale, kernel_size=k_up, encoder_kernel_size=k_encoder, compressed_channels=c_m,
            normalizer=normalizer, groups=groups, compressor_norm=compressor_norm, direction="up",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self.kernel_predictor(x)
        return ops.carafe(x, kernels, self.kernel_size, self.scale, groups=self.groups, backend=self.backend)

    def reassemble(self, features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Apply kernels from ``kernel_predictor`` (of another input) to ``features``; ``forward`` = both.

        Lets a model carry something beside the features through the same kernels (partial
        convolution's mask, CARAFE §4.3).
        """
        return ops.carafe(features, kernels, self.kernel_size, self.scale, groups=self.groups, backend=self.backend)


@register_downsampler("carafe")
class CarafeDownsample(nn.Module):
    """Content-aware ÷s downsampling (CARAFE++).

    Config keys: k_down, k_encoder, c_m, normalizer, groups, compressor_norm.

    Output pixel (y, x) reassembles the k_down×k_down neighbourhood of input pixel (s·y, s·x),
    so the output is ⌈H/s⌉ × ⌈W/s⌉. ``compressor_norm`` (BN+ReLU after the compressor) is the
    CARAFE++ classification-backbone setting and the default here.
    """

    def __init__(
        self,
        channels: int,
        scale: int,
        k_down: int = 5,
        k_encoder: int = 3,
        c_m: int | None = 16,
        normalizer: str = "softmax",
        groups: int = 1,
        compressor_norm: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        # Checked here, not at the first forward deep inside a training step.
        check_choice("carafe (down)", "backend", backend, (None, *BACKENDS))
        self.scale = scale
        self.kernel_size = k_down
        self.groups = groups
        self.backend = backend
        self.kernel_predictor = CarafeKernelPredictor(
            channels, scale, kernel_size=k_down, encoder_kernel_size=k_encoder, compressed_channels=c_m,
            normalizer=normalizer, groups=groups, compressor_norm=compressor_norm, direction="down",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self.kernel_predictor(x)
        return ops.carafe_down(x, kernels, self.kernel_size, self.scale, groups=self.groups, backend=self.backend)

    def reassemble(self, features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Apply kernels from ``kernel_predictor`` (of another input) to ``features``; ``forward`` = both."""
        return ops.carafe_down(features, kernels, self.kernel_size, self.scale, groups=self.groups,
                               backend=self.backend)

"""FreqFusion (Chen et al., TPAMI 2024) as a guided ×2 upsampler for an FPN top-down step.

FreqFusion fuses a high-res map ``hr`` (the FPN lateral) and a low-res map ``lr`` (the merged
coarser level) into ``hr_out + lr_up``, where (official ``FreqFusion.py``, default path
semi_conv / comp_feat_upsample / use_high_pass; spec newer-upsamplers §3):

- ``chr = conv1x1(hr)``, ``clr = conv1x1(lr)`` (→ c_m channels, bias);
- AHPF logits on chr: ``A0 = enc2(chr)`` (3×3, c_m→3²); ``chr ← 2·chr − carafe(chr, N_3(A0), 3, 1)``;
- ALPF logits ``L = enc(chr) + carafe(enc(clr), N_5(enc(chr)), 5, 2)`` (enc: 3×3, c_m→5²): the
  low-res kernel *logits* are CARAFE-upsampled with the hr-derived low-pass kernels;
- AHPF logits ``A = A0 + carafe(enc2(clr), N_5(L), 5, 2)``;
- ``lr_up = carafe(lr, N_5(L), 5, 2)``, ``hr_out = 2·hr − carafe(hr, N_3(A), 3, 1)``;

with ``N_k`` the kernel normaliser: softmax over k², times a k×k Hamming window
(``outer(np.hamming(k), np.hamming(k))``), renormalised to sum 1. Every filter is a CARAFE
reassembly through the project's op (s = 1 for the low-pass filters, s = 2 to upsample).

At an FPN step the model computes ``lateral + up(x, guide=lateral)``, so this module returns
``lr_up + (hr − carafe(hr, N_3(A), 3, 1))``: the sum is exactly the official ``hr_out + lr_up``.
There is no guide-free form. ``feature_resample`` (on by default, as in the official detection
configs) resamples ``lr_up`` at offsets predicted from ``chr`` and ``clr``
(:mod:`carafe_exp.resample.freqfusion_sampler`); ``resample_groups`` and ``resample_norm`` are the
official ``feature_resample_group`` (4) and ``feature_resample_norm`` (on).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp import ops
from carafe_exp.resample.checks import ResamplerArgumentError, check_divides, check_odd_kernel, check_positive_int
from carafe_exp.resample.fade import check_guided_scale
from carafe_exp.resample.freqfusion_sampler import LocalSimilaritySampler
from carafe_exp.resample.guided import check_guide
from carafe_exp.resample.registry import register_upsampler
from carafe_exp.resample.weight_init import normal_init, xavier_uniform_init


def hamming_window_2d(kernel_size: int) -> torch.Tensor:
    """``outer(hamming(k), hamming(k))`` flattened row-major to (k²,), numpy's symmetric Hamming window."""
    if kernel_size == 1:
        window = torch.ones(1, dtype=torch.float64)
    else:
        n = torch.arange(kernel_size, dtype=torch.float64)
        window = 0.54 - 0.46 * torch.cos(2 * math.pi * n / (kernel_size - 1))
    return torch.outer(window, window).flatten().to(torch.float32)


def normalize_windowed(logits: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """FreqFusion's kernel normaliser: softmax over k², times the Hamming window, renormalised."""
    weights = F.softmax(logits, dim=1) * window.to(logits.dtype).view(1, -1, 1, 1)
    return weights / weights.sum(dim=1, keepdim=True)


@register_upsampler("freqfusion")
class FreqFusionUpsample(nn.Module):
    """FreqFusion's FPN step as ``up(x, guide)`` (see module docstring).

    Config keys: k_lowpass, k_highpass, k_encoder, c_m, feature_resample, resample_groups, resample_norm,
    guide_channels.
    """

    requires_guide = True

    def __init__(self, channels: int, scale: int, k_lowpass: int = 5, k_highpass: int = 3, k_encoder: int = 3,
                 c_m: int = 64, feature_resample: bool = True, resample_groups: int = 4, resample_norm: bool = True,
                 guide_channels: int | None = None) -> None:
        super().__init__()
        check_guided_scale("freqfusion", scale)
        for key, value in (("k_lowpass", k_lowpass), ("k_highpass", k_highpass), ("k_encoder", k_encoder)):
            check_odd_kernel("freqfusion", key, value)
        check_positive_int("freqfusion", "c_m", c_m)
        if feature_resample:
            check_positive_int("freqfusion", "resample_groups", resample_groups)
            check_divides("freqfusion", "resample_groups", resample_groups, channels)
            if c_m % resample_groups:
                raise ResamplerArgumentError("freqfusion", "c_m", c_m,
                                             f"must be a multiple of resample_groups={resample_groups}")
            if resample_norm and c_m % 8:
                raise ResamplerArgumentError("freqfusion", "c_m", c_m, "must be a multiple of 8 with resample_norm "
                                             "(the offset resampler's GroupNorm(c_m / 8))")
        guide_channels = channels if guide_channels is None else guide_channels
        check_positive_int("freqfusion", "guide_channels", guide_channels)
        if guide_channels != channels:
            raise ResamplerArgumentError("freqfusion", "guide_channels", guide_channels,
                                         f"must equal channels={channels} (hr_out + lr_up adds the two)")
        self.scale = scale
        self.k_lowpass, self.k_highpass = k_lowpass, k_highpass
        self.guide_compressor = nn.Conv2d(guide_channels, c_m, 1)
        self.compressor = nn.Conv2d(channels, c_m, 1)
        self.lowpass_encoder = nn.Conv2d(c_m, k_lowpass * k_lowpass, k_encoder, padding=k_encoder // 2)
        self.highpass_encoder = nn.Conv2d(c_m, k_highpass * k_highpass, k_encoder, padding=k_encoder // 2)
        # Official init_weights: Xavier-uniform convs, then both kernel encoders N(0, 0.001).
        xavier_uniform_init(self.guide_compressor)
        xavier_uniform_init(self.compressor)
        normal_init(self.lowpass_encoder, std=0.001)
        normal_init(self.highpass_encoder, std=0.001)
        self.register_buffer("lowpass_window", hamming_window_2d(k_lowpass), persistent=False)
        self.register_buffer("highpass_window", hamming_window_2d(k_highpass), persistent=False)
        self.sampler = LocalSimilaritySampler(c_m, resample_groups, k_encoder, resample_norm) if feature_resample \
            else None

    def kernels(self, x: torch.Tensor, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised low-pass (N, k_lp², 2H, 2W) and high-pass (N, k_hp², 2H, 2W) kernels."""
        lowpass, highpass, _, _ = self._kernels_and_compressed(x, guide)
        return lowpass, highpass

    def _kernels_and_compressed(self, x: torch.Tensor, guide: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(low-pass kernels, high-pass kernels, enhanced compressed guide, compressed input)."""
        k_lp, k_hp = self.k_lowpass, self.k_highpass
        compressed_hr = self.guide_compressor(guide)
        compressed_lr = self.compressor(x)
        highpass_hr = self.highpass_encoder(compressed_hr)
        initial_highpass = normalize_windowed(highpass_hr, self.highpass_window)
        compressed_hr = 2 * compressed_hr - ops.carafe(compressed_hr, initial_highpass, k_hp, 1)
        lowpass_hr = self.lowpass_encoder(compressed_hr)
        initial_lowpass = normalize_windowed(lowpass_hr, self.lowpass_window)
        lowpass = lowpass_hr + ops.carafe(self.lowpass_encoder(compressed_lr), initial_lowpass, k_lp, 2)
        lowpass_kernels = normalize_windowed(lowpass, self.lowpass_window)
        highpass = highpass_hr + ops.carafe(self.highpass_encoder(compressed_lr), lowpass_kernels, k_lp, 2)
        return lowpass_kernels, normalize_windowed(highpass, self.highpass_window), compressed_hr, compressed_lr

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        guide = check_guide("freqfusion", x, guide, self.scale)
        lowpass, highpass, compressed_hr, compressed_lr = self._kernels_and_compressed(x, guide)
        upsampled = ops.carafe(x, lowpass, self.k_lowpass, self.scale)
        if self.sampler is not None:
            # The official call: dysampler(hr_x=chr after its high-pass enhancement, lr_x=clr, feat2sample=lr_up).
            upsampled = self.sampler(upsampled, compressed_hr, compressed_lr)
        high_frequencies = guide - ops.carafe(guide, highpass, self.k_highpass, 1)
        return upsampled + high_frequencies


__all__ = ["FreqFusionUpsample", "hamming_window_2d", "normalize_windowed"]

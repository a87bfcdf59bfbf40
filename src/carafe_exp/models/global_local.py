"""The Global&Local completion network (Iizuka et al. 2017) with CARAFE / CARAFE++ sites, and its Partial Conv variant.

The CARAFE supplement names Global&Local without listing its layers; these are mmagic's
``GLEncoderDecoder`` (``gl_{encoder,dilation,decoder}.py``), and an mmagic checkpoint loads into this
module and gives mmagic's outputs (``model.weights``, tests/reference). Every layer is conv + BN +
ReLU except the last, no skip connections:

    input: image with its hole filled + the hole mask (4 channels)
    conv5×5 64 → conv3×3 s2 128 → conv 128 → conv3×3 s2 256 → conv 256 → conv 256
    → dilated conv3×3 256 at d = 2, 4, 8, 16 → conv 256 → conv 256
    → deconv4×4 s2 256→128 → conv 128 → deconv4×4 s2 128→64 → conv 32 → conv3×3 → 3

Sites (CARAFE §4.3, CARAFE++ §4.3):
- ``decoder``: the chosen upsampler replaces both deconvolutions. ``upsampler=deconv`` means the
  network's own 4×4 stride-2 transposed conv (C_in→C_out, with BN+ReLU). Any other upsampler keeps
  the channel count, so the conv after it takes C_in (256→128, 128→32); nothing follows it but
  that conv, as CARAFE is a pure reassembly.
- ``encoder``: the chosen downsampler goes in front of each stride-2 conv, which then runs at
  stride 1 (CARAFE++). ``downsampler=conv`` keeps the original strided convs.

``partial=True`` is the papers' "Partial Conv" row: the same generator with every convolution a
:class:`~carafe_exp.models.partial_conv.PartialConv2d`. Its validity mask (1 = known) travels
through every resampler: nearest (×2 up, the PConv U-Net convention; (2y, 2x) down) for the
transposed convs and non-CARAFE resamplers, and through CARAFE / CARAFE++'s own reassembly kernels
when they are used, ``M' = Σ W·M`` (CARAFE §4.3), kept soft or made binary (``> 0``) by
``mask_update``. CARAFE reassembles with zero padding, so ``Σ W·M`` of an all-valid map falls to
about 0.36 at the corners and 0.6 along the edges, and the next partial conv would rescale the
border 2–3× more than in the baseline; ``mask_border=normalise`` (default) divides by the kernel
mass inside the image, ``M' = Σ W·M / Σ W·1``, so a valid region stays valid up to the border
(the zero-padded sum stays available as ``zero_pad``; the papers do not say). The forward takes the image and the hole mask and returns the raw output in
[-1, 1]; the task composites it with the known pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from carafe_exp.errors import ConfigError
from carafe_exp.models.generation_init import init_generation_normal
from carafe_exp.models.partial_conv import PartialConv2d
from carafe_exp.resample import ORIGINAL_DOWNSAMPLER, build_downsampler, build_upsampler
from carafe_exp.resample.carafe import CarafeDownsample, CarafeUpsample
from carafe_exp.resample.registry import split_spec

# The upsampler option that means "the network's own 4×4 stride-2 transposed convolution".
ORIGINAL_UPSAMPLER = "deconv"
MASK_UPDATES = ("soft", "binary")
MASK_BORDERS = ("normalise", "zero_pad")
# Kernels are positive (softmax) or non-negative (sigmoid): the in-image mass is > 0 except in a
# degenerate sigmoid kernel, where the carried mask is 0 anyway.
_KERNEL_MASS_FLOOR = 1e-12
OUTPUT_ACTIVATIONS = ("clip", "tanh")
SITES = ("decoder", "encoder")


class ConvBlock(nn.Module):
    """Conv (or partial conv) + BN + ReLU; ``forward(x, mask) -> (x, mask)`` (mask None for plain convs)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, dilation: int = 1,
                 partial: bool = False, norm_act: bool = True) -> None:
        super().__init__()
        conv_type = PartialConv2d if partial else nn.Conv2d
        # mmcv ConvModule: no conv bias when a norm follows.
        self.conv = conv_type(in_channels, out_channels, kernel_size, stride=stride,
                              padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=not norm_act)
        self.norm = nn.BatchNorm2d(out_channels) if norm_act else nn.Identity()
        self.act = nn.ReLU(inplace=True) if norm_act else nn.Identity()
        self.partial = partial
        init_generation_normal(self.conv)
        init_generation_normal(self.norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.partial:
            assert mask is not None
            x, mask = self.conv(x, mask)
        else:
            x = self.conv(x)
        return self.act(self.norm(x)), mask


def _carry_mask(resampler: CarafeUpsample | CarafeDownsample, kernels: torch.Tensor, mask: torch.Tensor,
                mask_update: str, mask_border: str = "normalise") -> torch.Tensor:
    """The validity mask reassembled with the same kernels as the features (CARAFE §4.3)."""
    groups = resampler.groups
    kernels = kernels.detach()
    # One mask per kernel group, so every group's kernels move it; the groups then agree by mean (soft) or any.
    carried = resampler.reassemble(mask.expand(-1, groups, -1, -1).contiguous(), kernels)
    if mask_border == "normalise":
        # Σ W·M / Σ W·1: the kernel mass that falls outside the image (zero padding) is not a hole.
        inside = resampler.reassemble(torch.ones_like(mask).expand(-1, groups, -1, -1).contiguous(), kernels)
        carried = carried / inside.clamp_min(_KERNEL_MASS_FLOOR)
    if mask_update == "binary":
        return (carried > 0).any(dim=1, keepdim=True).to(mask.dtype)
    return carried.mean(dim=1, keepdim=True).clamp(0.0, 1.0)


class UpsampleSite(nn.Module):
    """One decoder ×2 step: the original deconv + BN + ReLU, or the chosen upsampler (channels kept)."""

    def __init__(self, in_channels: int, out_channels: int, upsampler: str | Mapping[str, Any] | None,
                 mask_update: str, mask_border: str = "normalise") -> None:
        super().__init__()
        self.mask_update = mask_update
        self.mask_border = mask_border
        name = ORIGINAL_UPSAMPLER if upsampler is None else split_spec(upsampler)[0]
        self.original = name == ORIGINAL_UPSAMPLER
        if self.original:
            self.deconv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
            self.norm = nn.BatchNorm2d(out_channels)
            init_generation_normal(self.deconv)
            init_generation_normal(self.norm)
            self.out_channels = out_channels
        else:
            self.upsample = build_upsampler(upsampler, in_channels, 2,  # type: ignore[arg-type]
                                            site="the inpainting generator's decoder")
            self.out_channels = in_channels

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.original:
            x = F.relu(self.norm(self.deconv(x)), inplace=True)
        elif isinstance(self.upsample, CarafeUpsample):
            kernels = self.upsample.kernel_predictor(x)
            x = self.upsample.reassemble(x, kernels)
            if mask is not None:
                return x, _carry_mask(self.upsample, kernels, mask, self.mask_update, self.mask_border)
        else:
            x = self.upsample(x)
        if mask is not None:
            mask = F.interpolate(mask, scale_factor=2, mode="nearest")
        return x, mask


class StridedSite(nn.Module):
    """One encoder ÷2 step: the original stride-2 conv block, or the chosen downsampler then that block at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, downsampler: str | Mapping[str, Any] | None,
                 partial: bool, mask_update: str, mask_border: str = "normalise") -> None:
        super().__init__()
        self.mask_update = mask_update
        self.mask_border = mask_border
        name = ORIGINAL_DOWNSAMPLER if downsampler is None else split_spec(downsampler)[0]
        self.downsample: nn.Module | None = None
        if name != ORIGINAL_DOWNSAMPLER:
            self.downsample = build_downsampler(downsampler, in_channels, 2,  # type: ignore[arg-type]
                                                site="the inpainting generator's encoder")
        self.block = ConvBlock(in_channels, out_channels, 3, stride=1 if self.downsample is not None else 2,
                               partial=partial)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.downsample, CarafeDownsample):
            kernels = self.downsample.kernel_predictor(x)
            x_down = self.downsample.reassemble(x, kernels)
            if mask is not None:
                mask = _carry_mask(self.downsample, kernels, mask, self.mask_update, self.mask_border)
            x = x_down
        elif self.downsample is not None:
            x = self.downsample(x)
            if mask is not None:
                mask = mask[:, :, ::2, ::2]  # the downsampler contract's source pixel (2y, 2x)
        return self.block(x, mask)


class GlobalLocalGenerator(nn.Module):
    """Completion network: ``forward(image, hole_mask) -> raw output`` in [-1, 1] (see module docstring)."""

    def __init__(self, upsampler: str | Mapping[str, Any] | None = None,
                 downsampler: str | Mapping[str, Any] | None = None, sites: Mapping[str, bool] | None = None,
                 partial: bool = False, mask_update: str = "soft", hole_fill: float = 0.0,
                 output_activation: str = "clip", mask_border: str = "normalise") -> None:
        super().__init__()
        sites = dict(sites or {})
        unknown = sorted(set(sites) - set(SITES))
        if unknown:
            raise ConfigError(f"model.sites: unknown site(s) {unknown}; the inpainting generator has {list(SITES)}")
        if mask_update not in MASK_UPDATES:
            raise ConfigError(f"model.mask_update must be one of {list(MASK_UPDATES)}, got {mask_update!r}")
        if mask_border not in MASK_BORDERS:
            raise ConfigError(f"model.mask_border must be one of {list(MASK_BORDERS)}, got {mask_border!r}")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ConfigError(f"model.output_activation must be one of {list(OUTPUT_ACTIVATIONS)}, "
                              f"got {output_activation!r}")
        self.partial = bool(partial)
        self.hole_fill = float(hole_fill)
        self.output_activation = output_activation
        up = upsampler if sites.get("decoder", True) else None
        down = downsampler if sites.get("encoder", False) else None

        def block(cin: int, cout: int, k: int = 3, **kwargs: Any) -> ConvBlock:
            return ConvBlock(cin, cout, k, partial=self.partial, **kwargs)

        self.encoder = nn.ModuleList([
            block(4, 64, 5),
            StridedSite(64, 128, down, self.partial, mask_update, mask_border),
            block(128, 128),
            StridedSite(128, 256, down, self.partial, mask_update, mask_border),
            block(256, 256),
            block(256, 256),
        ])
        self.dilation = nn.ModuleList([block(256, 256, dilation=d) for d in (2, 4, 8, 16)])
        first_up = UpsampleSite(256, 128, up, mask_update, mask_border)
        second_up = UpsampleSite(128, 64, up, mask_update, mask_border)
        self.decoder = nn.ModuleList([
            block(256, 256),
            block(256, 256),
            first_up,
            block(first_up.out_channels, 128),
            second_up,
            block(second_up.out_channels, 32),
            block(32, 3, norm_act=False),
        ])

    def forward(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """``image`` (N, 3, H, W) in [-1, 1], ``hole`` (N, 1, H, W) with 1 in the hole; H, W multiples of 4."""
        if image.shape[-2] % 4 or image.shape[-1] % 4:
            raise ValueError(f"the inpainting generator needs H and W divisible by 4, got {tuple(image.shape[-2:])}")
        hole = hole.to(image.dtype)
        # The hole's content never reaches the network: it sees the fill value and the mask channel.
        x = torch.cat([image * (1.0 - hole) + self.hole_fill * hole, hole], dim=1)
        mask = (1.0 - hole) if self.partial else None
        for layer in [*self.encoder, *self.dilation, *self.decoder]:
            x, mask = layer(x, mask)
        if self.output_activation == "tanh":
            return torch.tanh(x)
        return x.clamp(-1.0, 1.0)


def build_global_local(upsampler: str | Mapping[str, Any] | None = None,
                       downsampler: str | Mapping[str, Any] | None = None,
                       sites: Mapping[str, bool] | None = None, hole_fill: float = 0.0,
                       output_activation: str = "clip") -> GlobalLocalGenerator:
    """``model=global_local``: the Global&Local completion network (CARAFE Table 7, CARAFE++ Table X)."""
    return GlobalLocalGenerator(upsampler, downsampler, sites, partial=False, hole_fill=hole_fill,
                                output_activation=output_activation)


def build_partial_conv(upsampler: str | Mapping[str, Any] | None = None,
                       downsampler: str | Mapping[str, Any] | None = None,
                       sites: Mapping[str, bool] | None = None, mask_update: str = "soft", hole_fill: float = 0.0,
                       output_activation: str = "clip", mask_border: str = "normalise") -> GlobalLocalGenerator:
    """``model=partial_conv``: the same generator with every convolution a partial convolution ([S] §1)."""
    return GlobalLocalGenerator(upsampler, downsampler, sites, partial=True, mask_update=mask_update,
                                hole_fill=hole_fill, output_activation=output_activation, mask_border=mask_border)

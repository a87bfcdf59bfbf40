"""Upsamplers and downsamplers as nn.Modules, their registries and builders.

Importing this package registers every resampler, so ``build_upsampler("carafe", ...)``
works after ``import carafe_exp.resample``.
"""

# Importing each module registers its resamplers (registration side effects).
from carafe_exp.resample import (  # noqa: F401
    a2u,
    carafe,
    dpp,
    dysample,
    fade,
    freqfusion,
    gum,
    indexnet,
    interpolation,
    learned_upsample,
    lip,
    pooling,
    sapa,
    spatial_attention,
)
from carafe_exp.resample.kernel_predictor import CarafeKernelPredictor, normalize_kernels
from carafe_exp.resample.registry import (
    DOWNSAMPLERS,
    ORIGINAL_DOWNSAMPLER,
    UPSAMPLERS,
    build_downsampler,
    build_upsampler,
    register_downsampler,
    register_upsampler,
)

__all__ = [
    "CarafeKernelPredictor",
    "DOWNSAMPLERS",
    "ORIGINAL_DOWNSAMPLER",
    "UPSAMPLERS",
    "build_downsampler",
    "build_upsampler",
    "normalize_kernels",
    "register_downsampler",
    "register_upsampler",
]

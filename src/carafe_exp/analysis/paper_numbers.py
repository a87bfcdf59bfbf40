"""The complexity numbers the CARAFE paper reports, as printed (CARAFE ICCV 2019, Table 2).

FLOPs are per pixel of the upsampler's input for a ×2 upsampling of a 256-channel map, with a
multiply-add counted as 2 FLOPs and biases counted (the paper's ref. [25]); "M" and "k" are 10⁶
and 10³ as in the paper. The text is kept verbatim so comparisons use the paper's own precision.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE2_CHANNELS = 256
TABLE2_SCALE = 2


@dataclass(frozen=True)
class PaperCost:
    """One row of CARAFE Table 2's FLOPs and Params columns."""

    label: str
    registry_key: str
    flops: str
    params: str


TABLE2: tuple[PaperCost, ...] = (
    PaperCost("Nearest", "nearest", "0", "0"),
    PaperCost("Bilinear", "bilinear", "8k", "0"),
    PaperCost("N.C.", "nearest_conv", "4.7M", "590k"),
    PaperCost("B.C.", "bilinear_conv", "4.7M", "590k"),
    PaperCost("Deconv", "deconv", "1.2M", "590k"),
    PaperCost("P.S.", "pixel_shuffle", "4.7M", "2.4M"),
    PaperCost("GUM", "gum", "1.1M", "132k"),
    PaperCost("S.A.", "spatial_attention", "28k", "2.3k"),
    PaperCost("CARAFE", "carafe", "199k", "74k"),
)

# The CARAFE intro quotes two of these numbers more precisely ("H*W*199k FLOPs vs H*W*1180k of deconvolution").
INTRO_FLOPS = {"carafe": "199k", "deconv": "1180k"}

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


@dataclass(frozen=True)
class PaperTable:
    """Results of one paper table: rows keyed by a config value (``match`` is a dotted config path)."""

    title: str
    match: str
    metrics: tuple[str, ...]
    rows: dict[str, tuple[float, ...]]


# CARAFE (ICCV 2019) Table 2: Faster R-CNN R50-FPN 1x on COCO val2017, upsampler in the FPN.
CARAFE_TABLE2 = PaperTable(
    title="CARAFE Table 2: Faster R-CNN, upsamplers in FPN (COCO val2017)",
    match="upsampler.name",
    metrics=("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl"),
    rows={
        "nearest": (36.5, 58.4, 39.3, 21.3, 40.3, 47.2),
        "bilinear": (36.7, 58.7, 39.7, 21.0, 40.5, 47.5),
        "nearest_conv": (36.6, 58.6, 39.5, 21.4, 40.3, 46.4),
        "bilinear_conv": (36.6, 58.7, 39.4, 21.6, 40.6, 46.8),
        "deconv": (36.4, 58.2, 39.2, 21.3, 39.9, 46.5),
        "pixel_shuffle": (36.5, 58.8, 39.1, 20.9, 40.4, 46.7),
        "gum": (36.9, 58.9, 39.7, 21.5, 40.6, 48.1),
        "spatial_attention": (36.9, 58.8, 39.8, 21.7, 40.8, 47.0),
        "carafe": (37.8, 60.1, 40.8, 23.1, 41.7, 48.5),
    },
)

# CARAFE (ICCV 2019) Table 3: Mask R-CNN R50-FPN 1x, upsampler in the mask head (mask AP).
CARAFE_TABLE3 = PaperTable(
    title="CARAFE Table 3: Mask R-CNN, upsamplers in the mask head (COCO val2017, segm)",
    match="upsampler.name",
    metrics=("segm/AP", "segm/AP50", "segm/AP75", "segm/APs", "segm/APm", "segm/APl"),
    rows={
        "nearest": (32.7, 55.0, 34.8, 17.7, 35.9, 44.4),
        "bilinear": (34.2, 55.9, 36.4, 18.5, 37.5, 46.2),
        "deconv": (34.2, 55.5, 36.3, 17.6, 37.8, 46.7),
        "pixel_shuffle": (34.4, 56.0, 36.6, 18.5, 37.6, 47.5),
        "gum": (34.3, 55.7, 36.5, 17.6, 37.6, 46.9),
        "spatial_attention": (34.1, 55.6, 36.5, 17.6, 37.4, 46.6),
        "carafe": (34.7, 56.2, 37.1, 18.2, 37.9, 47.5),
    },
)

PAPER_TABLES: dict[str, PaperTable] = {"carafe/table2": CARAFE_TABLE2, "carafe/table3": CARAFE_TABLE3}

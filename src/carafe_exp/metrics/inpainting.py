"""Inpainting metrics of CARAFE Table 7 / CARAFE++ Table X: L1 error (%) and PSNR (dB), DDP-aware.

The papers only say "L1 error (lower is better), PSNR (higher)". Both are computed here on the
completed image y = (1 − M)·x + M·ŷ in [0, 1] over the hole (M = 1), per image, then averaged
over images:

    L1(%)  = 100 · Σ_{M=1} |y − x| / (3 · Σ M)
    PSNR   = 10 · log10(1 / MSE_hole),  MSE_hole = Σ_{M=1} (y − x)² / (3 · Σ M)

This reading is inferred: for the GL row, 6.78 % and 19.58 dB imply an RMSE about 1.5× the MAE, as
on a region of real errors; whole-image values on the composite would give an L1 several times
smaller and a PSNR 5–7 dB higher at 20–30 % holes. The whole-image values are reported beside
them as ``L1_whole`` and ``PSNR_whole``; ``PSNR_whole`` is mmagic's Places PSNR (whole image, both
images rounded to 8 bits first, as ``tensor2img`` does), and ``L1`` equals mmagic's
``MAE(mask_key='mask', scaling=100)``.
The same hole values in the other reading the numbers allow, the images in [−1, 1] (the network's
range) with a peak of 1, are ``L1_signed`` = 2 · L1 and ``PSNR_signed`` = PSNR − 20·log10(2) dB
(MSE four times larger), so a result can be set against either reading (issue #19 §3).
``hole_area`` is the measured mean share of hole pixels per image (%), the mask distribution's
area on the evaluated images (hole L1 / PSNR depend strongly on it).
Images without hole pixels do not enter the hole averages. An exact match gives 100 dB (the MSE
is floored at 1e-10) rather than infinity, so averages stay finite.

:class:`InpaintingMetrics` keeps per-image values with their dataset index and gathers them
across DDP ranks; an index seen twice (a DistributedSampler pads the last batch with repeated
images) counts once, so 2 processes report what 1 process reports.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

METRIC_NAMES = ("L1", "PSNR", "L1_whole", "PSNR_whole", "L1_signed", "PSNR_signed", "hole_area")
# [0, 1] → [−1, 1] doubles every difference: L1 × 2, MSE × 4.
SIGNED_SCALE = 2.0
MSE_FLOOR = 1e-10


def _check(pred: torch.Tensor, target: torch.Tensor, hole: torch.Tensor | None) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred and target must be (N, C, H, W) of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if hole is not None and (hole.dim() != 4 or hole.shape[1] != 1 or hole.shape[0] != pred.shape[0]
                             or hole.shape[2:] != pred.shape[2:]):
        raise ValueError(f"hole must be (N, 1, H, W) matching {tuple(pred.shape)}, got {tuple(hole.shape)}")


def _per_image_means(pred: torch.Tensor, target: torch.Tensor,
                     hole: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image mean |error|, mean squared error and pixel count over the region (float64)."""
    _check(pred, target, hole)
    error = pred.double() - target.double()
    weight = torch.ones_like(error[:, :1]) if hole is None else hole.double()
    count = weight.sum(dim=(1, 2, 3)) * error.shape[1]
    safe = count.clamp_min(1.0)
    mae = (error.abs() * weight).sum(dim=(1, 2, 3)) / safe
    mse = (error.square() * weight).sum(dim=(1, 2, 3)) / safe
    return mae, mse, count


def to_8bit(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] values rounded to the 256 levels of an 8-bit image (still in [0, 1])."""
    return torch.round(image.double().clamp(0.0, 1.0) * 255.0) / 255.0


def l1_percent(pred: torch.Tensor, target: torch.Tensor, hole: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image L1 error in percent of the [0, 1] range over the hole (whole image when ``hole`` is None)."""
    return 100.0 * _per_image_means(pred, target, hole)[0]


def psnr_db(pred: torch.Tensor, target: torch.Tensor, hole: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB for a peak of 1 over the hole (whole image when ``hole`` is None)."""
    mse = _per_image_means(pred, target, hole)[1]
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


class InpaintingMetrics(Metric):
    """Accumulates per-image L1 / PSNR (hole and whole image); ``compute()`` returns their image means."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("indices", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, completed: torch.Tensor, target: torch.Tensor, hole: torch.Tensor,
               indices: torch.Tensor | None = None) -> None:
        """``completed``, ``target`` (N, 3, H, W) in [0, 1]; ``hole`` (N, 1, H, W), 1 in the hole.

        ``indices``: each image's dataset index (repeats across calls count once); None disables that.
        """
        hole_mae, hole_mse, hole_count = _per_image_means(completed, target, hole)
        whole_mae = _per_image_means(completed, target, None)[0]
        whole_mse_8bit = _per_image_means(to_8bit(completed), to_8bit(target), None)[1]
        values = torch.stack([
            100.0 * hole_mae, 10.0 * torch.log10(1.0 / hole_mse.clamp_min(MSE_FLOOR)),
            100.0 * whole_mae, 10.0 * torch.log10(1.0 / whole_mse_8bit.clamp_min(MSE_FLOOR)),
            (hole_count > 0).double(),
            100.0 * hole.double().mean(dim=(1, 2, 3)),
        ], dim=1)
        if indices is None:
            indices = torch.full((values.shape[0],), -1, dtype=torch.long, device=values.device)
        self.indices.append(indices.to(device=values.device, dtype=torch.long).reshape(-1))
        self.values.append(values)

    def compute(self) -> dict[str, torch.Tensor]:
        indices = self.indices if isinstance(self.indices, torch.Tensor) else (
            torch.cat(self.indices) if self.indices else torch.zeros(0, dtype=torch.long))
        values = self.values if isinstance(self.values, torch.Tensor) else (
            torch.cat(self.values) if self.values else torch.zeros(0, 6, dtype=torch.float64))
        keep = _first_occurrences(indices)
        values = values[keep]
        has_hole = values[:, 4] > 0
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=values.device)

        def mean(column: torch.Tensor) -> torch.Tensor:
            return column.mean() if column.numel() else nan

        l1, psnr = mean(values[has_hole, 0]), mean(values[has_hole, 1])
        return {
            "L1": l1,
            "PSNR": psnr,
            "L1_whole": mean(values[:, 2]),
            "PSNR_whole": mean(values[:, 3]),
            "L1_signed": SIGNED_SCALE * l1,
            "PSNR_signed": psnr - 20.0 * torch.log10(torch.tensor(SIGNED_SCALE, dtype=torch.float64)),
            "hole_area": mean(values[:, 5]),
        }


def _first_occurrences(indices: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping the first entry of every non-negative index (negative ones are all kept)."""
    keep = torch.ones_like(indices, dtype=torch.bool)
    known = indices >= 0
    if known.any():
        order = torch.argsort(indices, stable=True)
        sorted_indices = indices[order]
        repeated = torch.zeros_like(keep)
        repeated[1:] = sorted_indices[1:] == sorted_indices[:-1]
        keep[order[repeated]] = False
    return keep | ~known

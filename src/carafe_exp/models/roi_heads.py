"""torchvision's RoIHeads with the box-regression loss of mmdetection v1 (smooth-L1 β = 1.0).

torchvision computes the RoI head's box loss as smooth-L1 with β = 1/9 (Detectron's value);
mmdetection v1, which trained every CARAFE model, uses β = 1.0 there (``loss_bbox=dict(
type='SmoothL1Loss', beta=1.0)`` in the bbox head; the RPN keeps 1/9 in both). Both normalise by
the number of sampled RoIs and sum over the 4 coordinates of the positives, so only β differs.
mmdetection v2/v3 (the released checkpoints) use ``L1Loss``, which is β = 0.

:class:`BoxLossRoIHeads` keeps torchvision's forward (sampling, matching, mask branch) and
recomputes ``loss_box_reg`` from the same sampled RoIs and predictions with the configured β.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads

from carafe_exp.errors import ConfigError

TORCHVISION_BOX_LOSS_BETA = 1.0 / 9.0
MMDET_V1_BOX_LOSS_BETA = 1.0


def box_regression_loss(box_regression: torch.Tensor, labels: list[torch.Tensor],
                        regression_targets: list[torch.Tensor], beta: float) -> torch.Tensor:
    """Smooth-L1(β) between the class-specific deltas of the positive RoIs and their targets, / sampled RoIs."""
    labels_all = torch.cat(labels, dim=0)
    targets_all = torch.cat(regression_targets, dim=0)
    positive = torch.where(labels_all > 0)[0]
    deltas = box_regression.reshape(box_regression.shape[0], -1, 4)[positive, labels_all[positive]]
    loss = F.smooth_l1_loss(deltas, targets_all[positive], beta=beta, reduction="sum")
    return loss / labels_all.numel()


class BoxLossRoIHeads(RoIHeads):
    """RoIHeads whose ``loss_box_reg`` uses smooth-L1 with ``box_loss_beta`` (see module docstring)."""

    box_loss_beta: float
    _sampled: tuple[list[torch.Tensor], list[torch.Tensor]] | None

    def select_training_samples(self, proposals: list[torch.Tensor], targets: Any) -> Any:
        proposals, matched_idxs, labels, regression_targets = super().select_training_samples(proposals, targets)
        self._sampled = (labels, regression_targets)
        return proposals, matched_idxs, labels, regression_targets

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: Any = None) -> Any:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        predictions: list[torch.Tensor] = []
        hook = self.box_predictor.register_forward_hook(lambda _m, _i, out: predictions.append(out[1]))
        self._sampled = None
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            hook.remove()
        if self._sampled is None or len(predictions) != 1:
            raise RuntimeError("BoxLossRoIHeads: torchvision's RoIHeads.forward no longer samples and predicts once")
        labels, regression_targets = self._sampled
        self._sampled = None
        losses["loss_box_reg"] = box_regression_loss(predictions[0], labels, regression_targets, self.box_loss_beta)
        return result, losses


def use_box_loss_beta(roi_heads: RoIHeads, beta: float) -> RoIHeads:
    """Make ``roi_heads`` compute its box loss with smooth-L1 ``beta`` (in place; same parameters)."""
    if not beta >= 0:
        raise ConfigError(f"model.box_loss_beta={beta}: smooth-L1 needs beta >= 0 (mmdetection v1: 1.0; 0 is L1, v2)")
    roi_heads.__class__ = BoxLossRoIHeads
    roi_heads.box_loss_beta = float(beta)
    roi_heads._sampled = None
    return roi_heads


__all__ = ["BoxLossRoIHeads", "MMDET_V1_BOX_LOSS_BETA", "TORCHVISION_BOX_LOSS_BETA", "box_regression_loss",
           "use_box_loss_beta"]

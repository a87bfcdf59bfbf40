"""torchvision's RPN with a configurable box-regression loss (``model.rpn_box_loss_beta``).

torchvision's ``RegionProposalNetwork.compute_loss`` uses smooth-L1 with β = 1/9, as mmdetection
v1 does in its RPN head (``loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0)``), the code the
CARAFE papers trained with. mmdetection v2/v3, which trained the released CARAFE checkpoints,
uses ``L1Loss`` there (β = 0). Both normalise by the number of sampled anchors (positives and
negatives of the whole batch), so only β differs; the objectness loss is the same BCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.rpn import RegionProposalNetwork

from carafe_exp.errors import ConfigError

MMDET_V1_RPN_BOX_LOSS_BETA = 1.0 / 9.0
L1_BETA = 0.0


class BoxLossRPN(RegionProposalNetwork):
    """``RegionProposalNetwork`` whose box loss is smooth-L1 with ``box_loss_beta`` (0: L1)."""

    box_loss_beta: float

    def compute_loss(self, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor, labels: list[torch.Tensor],
                     regression_targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision's compute_loss, with its fixed beta=1/9 replaced by the configured one.
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(sampled_pos, dim=0))[0]
        negative = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([positive, negative], dim=0)
        objectness = objectness.flatten()
        labels_all = torch.cat(labels, dim=0)
        targets_all = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[positive], targets_all[positive], beta=self.box_loss_beta,
                                    reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels_all[sampled])
        return objectness_loss, box_loss


def use_rpn_box_loss_beta(rpn: RegionProposalNetwork, beta: float) -> RegionProposalNetwork:
    """Make ``rpn`` compute its box loss with smooth-L1 ``beta`` (0: L1), in place."""
    if not beta >= 0:
        raise ConfigError(f"model.rpn_box_loss_beta={beta}: smooth-L1 needs beta >= 0 (0 is L1, mmdetection v2)")
    rpn.__class__ = BoxLossRPN
    rpn.box_loss_beta = float(beta)
    return rpn


__all__ = ["BoxLossRPN", "L1_BETA", "MMDET_V1_RPN_BOX_LOSS_BETA", "use_rpn_box_loss_beta"]

"""Initialisation of the R-CNN heads: mmdetection v1's (the CARAFE papers') or torchvision's.

torchvision leaves the box head's linear layers at PyTorch's default (Kaiming-uniform, a=√5) and
the mask predictor's biases at PyTorch's default. mmdetection v1, which trained every CARAFE
model, initialises (``ConvFCBBoxHead.init_weights``, ``BBoxHead.init_weights``,
``FCNMaskHead.init_weights``):

- the shared fully-connected layers fc6, fc7: Xavier-uniform, zero bias;
- the classifier ``fc_cls``: N(0, 0.01), zero bias; the box regressor ``fc_reg``: N(0, 0.001), zero bias;
- the mask head's 2×2 deconv and 1×1 logits: Kaiming-normal (fan_out, ReLU), zero bias.

The RPN head (N(0, 0.01), zero bias) and the mask head's four 3×3 convs (Kaiming-normal, zero
bias) are initialised alike by both, so they are left as torchvision builds them.
"""

from __future__ import annotations

from torch import nn

HEAD_INITS = ("mmdet_v1", "torchvision")
CLASSIFIER_STD = 0.01
REGRESSOR_STD = 0.001


def _kaiming_fan_out(module: nn.Conv2d | nn.ConvTranspose2d) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_heads_mmdet_v1(roi_heads: nn.Module) -> None:
    """Re-initialise a torchvision RoIHeads' box head, box predictor and mask predictor as mmdetection v1 does."""
    for name in ("fc6", "fc7"):
        layer = getattr(roi_heads.box_head, name)
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    predictor = roi_heads.box_predictor
    nn.init.normal_(predictor.cls_score.weight, std=CLASSIFIER_STD)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.normal_(predictor.bbox_pred.weight, std=REGRESSOR_STD)
    nn.init.zeros_(predictor.bbox_pred.bias)
    mask_predictor = getattr(roi_heads, "mask_predictor", None)
    if mask_predictor is not None:
        # The 2x2 deconv (when the head keeps it) and the logits; other upsamplers keep their own init.
        for module in (getattr(mask_predictor, "conv5_mask", None), mask_predictor.mask_fcn_logits):
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                _kaiming_fan_out(module)


__all__ = ["CLASSIFIER_STD", "HEAD_INITS", "REGRESSOR_STD", "init_heads_mmdet_v1"]

"""mmdetection 3.3's own Faster / Mask R-CNN, built from the config files its wheel ships, for the equivalence tests.

The reference runs unchanged: mmdet's config (``mmdet/.mim/configs/...``), its registry and model code, mmcv's
CARAFEPack / RoIAlign / nms Python (kernels from ``tests/mmcv_ext_standin.py``). Only what a test must control is
set: no ImageNet download (``backbone.init_cfg=None``), ``test_cfg.rcnn.score_thr=0`` (random weights score below
the zoo's 0.05), smaller proposal and detection budgets (the CPU time of the RoI heads; ours get the same),
random weights with random BatchNorm statistics, float64. :func:`reference_outputs` runs the
model's own methods stage by stage on one image and returns every tensor the tests compare.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

import mmcv_ext_standin
from reference_packages import import_reference

# The model zoo's CARAFE detectors and the plain-FPN baseline, as named in mmdetection 3.3's config tree.
CONFIGS = {
    "faster_rcnn_carafe": "carafe/faster-rcnn_r50_fpn-carafe_1x_coco.py",
    "mask_rcnn_carafe": "carafe/mask-rcnn_r50_fpn-carafe_1x_coco.py",
    "faster_rcnn_fpn": "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
}
# The data preprocessor of every one of these configs: RGB ImageNet mean/std on 0-255 pixels.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def import_mmdet() -> ModuleType:
    """mmdet with its modules registered (skips or fails as :func:`import_reference` says when absent)."""
    mmcv_ext_standin.install()
    mmdet = import_reference("mmdet")
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    return mmdet


def config_path(name: str) -> Path:
    mmdet = import_mmdet()
    return Path(mmdet.__file__).parent / ".mim" / "configs" / CONFIGS[name]


def randomise(model: nn.Module, seed: int) -> None:
    """Random weights everywhere, BatchNorm statistics included, at scales that keep activations O(1).

    Convolutions and hidden linears are Kaiming-normal (fan-in); the last BatchNorm of each residual
    branch is scaled down so 16 blocks of sums stay moderate; the prediction layers (RPN, box, mask
    outputs) get small weights so that deltas stay in the range a trained detector gives, and the classifier's
    scores follow the RoI rather than a per-class bias (so the detections hold several classes).
    """
    generator = torch.Generator().manual_seed(seed)

    # Values representable in float32: our model is built in float32 and loads the file before .double().
    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return (torch.randn(shape, generator=generator, dtype=torch.float64) * std).float().double()

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)).float().double()

    small_outputs = ("rpn_reg", "fc_reg")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                std = (2.0 / fan_in) ** 0.5
                bias_std = 0.1
                if name.endswith(small_outputs):
                    std *= 0.1
                if name.endswith("fc_cls"):   # scores led by the RoI's features, not by a class bias
                    std, bias_std = std * 0.25, 0.01
                weight = normal(module.weight.shape, std)
                if name.endswith("fc_cls"):
                    # fc7's outputs share a large positive mean (ReLU): rows of zero sum ignore it.
                    weight = (weight - weight.mean(dim=1, keepdim=True)).float().double()
                module.weight.copy_(weight)
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, bias_std))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                last_of_branch = name.endswith("bn3")
                low, high = (0.05, 0.3) if last_of_branch else (0.5, 1.5)
                module.weight.copy_(uniform(module.weight.shape, low, high))
                module.bias.copy_(normal(module.bias.shape, 0.1))
                module.running_mean.copy_(normal(module.running_mean.shape, 0.2))
                module.running_var.copy_(uniform(module.running_var.shape, 0.5, 2.0))


def reference_config(name: str) -> Any:
    """mmdetection's config ``name`` (see :data:`CONFIGS`) as its own ``Config.fromfile`` reads it."""
    import_mmdet()
    from mmengine.config import Config

    return Config.fromfile(str(config_path(name)))


def build_reference(name: str, seed: int, proposals: int, detections: int) -> nn.Module:
    """mmdetection's model of config ``name``, random weights, float64, eval, with the given test budgets.

    The weights are float32 values (computed in float64): a model loading the file in float32 and then
    converted to float64 holds exactly the same numbers.
    """
    from mmengine.registry import DefaultScope
    from mmdet.registry import MODELS

    cfg = reference_config(name)
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    cfg.model.test_cfg.rpn.max_per_img = proposals
    cfg.model.test_cfg.rcnn.max_per_img = detections
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(cfg.model)
    randomise(model, seed)
    return model.double().eval()


def save_reference_checkpoint(model: nn.Module, path: Path) -> Path:
    """The file as mmdetection writes it (mmengine ``save_checkpoint`` of ``{'meta', 'state_dict'}``)."""
    import mmdet
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu

    meta = {"mmdet_version": mmdet.__version__, "dataset_meta": {"classes": [f"class{i}" for i in range(80)]}}
    save_checkpoint({"meta": meta, "state_dict": weights_to_cpu(get_state_dict(model))}, str(path))
    return path


@dataclass
class ReferenceOutputs:
    """Every compared tensor of one forward of the reference, in its own layout (classes without background)."""

    batch: torch.Tensor                  # the normalised, padded input (1, 3, H64, W64)
    fpn: list[torch.Tensor]              # P2-P6
    rpn_scores: list[torch.Tensor]       # per level (1, A, h, w) logits
    rpn_deltas: list[torch.Tensor]       # per level (1, 4A, h, w)
    proposals: torch.Tensor              # (P, 4), by decreasing score
    proposal_scores: torch.Tensor        # (P,)
    roi_scores: torch.Tensor             # (P, 81) logits for the proposals, background last
    roi_deltas: torch.Tensor             # (P, 320)
    boxes: torch.Tensor                  # final detections (D, 4), by decreasing score
    scores: torch.Tensor                 # (D,)
    labels: torch.Tensor                 # (D,) 0..79
    mask_logits: torch.Tensor | None     # (D, 80, 28, 28) for the final boxes (Mask R-CNN)


def normalised_batch(image: torch.Tensor, divisor: int) -> torch.Tensor:
    """mmdetection's DetDataPreprocessor on an RGB 0-255 image, in float64: normalise, pad bottom/right with 0."""
    mean = torch.tensor(MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float64)[:, None, None]
    normalised = (image.double() - mean) / std
    height, width = image.shape[-2:]
    pad_h, pad_w = -height % divisor, -width % divisor
    return nn.functional.pad(normalised, (0, pad_w, 0, pad_h))[None]


def _center_classifier(model: nn.Module, features: tuple[torch.Tensor, ...], rois: torch.Tensor) -> None:
    """Shift the random classifier's biases so each class's mean logit over these RoIs is 0.

    With random weights the RoIs' fc7 vectors share most of their direction, so one class would win
    everywhere; centred, the class follows each RoI's own features and the detections hold many classes.
    """
    head = model.roi_head.bbox_head
    pooled = model.roi_head.bbox_roi_extractor(features[:model.roi_head.bbox_roi_extractor.num_inputs], rois)
    hidden = pooled.flatten(1)
    for fc in head.shared_fcs:
        hidden = head.relu(fc(hidden))
    head.fc_cls.bias.copy_((head.fc_cls.bias - head.fc_cls(hidden).mean(dim=0)).float())


def reference_outputs(model: nn.Module, image: torch.Tensor, center_classifier: bool = False) -> ReferenceOutputs:
    """Run the reference on one RGB uint8 image (3, H, W) through its own preprocessor, heads and post-processing.

    ``center_classifier`` first sets the random classifier's biases (see :func:`_center_classifier`), so save
    the checkpoint after this call.
    """
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import bbox2roi

    height, width = image.shape[-2:]
    sample = DetDataSample(metainfo={"img_shape": (height, width), "ori_shape": (height, width),
                                     "scale_factor": (1.0, 1.0)})
    # mmdetection's own preprocessing (BGR input as cv2 loads it; bgr_to_rgb in the config), in float32.
    processed = model.data_preprocessor({"inputs": [image.flip(0)], "data_samples": [sample]}, False)
    samples = processed["data_samples"]
    batch = normalised_batch(image, model.data_preprocessor.pad_size_divisor)
    # The float64 input used below is that preprocessing (up to its float rounding).
    torch.testing.assert_close(batch, processed["inputs"].double(), rtol=0, atol=1e-5)
    metas = [s.metainfo for s in samples]
    with torch.no_grad():
        features = model.extract_feat(batch)
        rpn_scores, rpn_deltas = model.rpn_head(features)
        proposals = model.rpn_head.predict(features, samples, rescale=False)[0]
        rois = bbox2roi([proposals.bboxes])
        if center_classifier:
            _center_classifier(model, features, rois)
        roi = model.roi_head._bbox_forward(features, rois)
        detections = model.roi_head.predict_bbox(features, metas, [proposals], model.roi_head.test_cfg,
                                                 rescale=False)[0]
        mask_logits = None
        if getattr(model.roi_head, "with_mask", False):
            mask_logits = model.roi_head._mask_forward(features, bbox2roi([detections.bboxes]))["mask_preds"]
    return ReferenceOutputs(batch, list(features), list(rpn_scores), list(rpn_deltas), proposals.bboxes,
                            proposals.scores, roi["cls_score"], roi["bbox_pred"], detections.bboxes,
                            detections.scores, detections.labels, mask_logits)


def reference_l1_loss(prediction: torch.Tensor, target: torch.Tensor, average_over: int) -> torch.Tensor:
    """mmdetection's ``L1Loss`` (the v2/v3 box losses) summed over the given rows, averaged as its heads do."""
    import_mmdet()
    from mmdet.models.losses import L1Loss

    return L1Loss(loss_weight=1.0)(prediction, target, avg_factor=average_over)


"""Same weights, same outputs: mmdetection 3.3's Faster / Mask R-CNN (FPN_CARAFE, CARAFE mask head, plain FPN).

Each reference model is built from mmdetection's own config file (the model zoo's
``carafe/faster-rcnn_r50_fpn-carafe_1x_coco.py``, ``carafe/mask-rcnn_r50_fpn-carafe_1x_coco.py`` and the baseline
``faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py``) with random weights and BatchNorm statistics, saved the way
mmdetection saves checkpoints, and loaded into ours through the user-facing path (the CLI's config with
``+setting=mmdet_v2`` and ``model.weights=<file>``, built by ``build_model``). On one image (odd size, so the
padding to 64 is exercised), in float64, the tests compare the FPN outputs P2-P6, RPN scores and deltas,
proposals, the RoI head's scores and deltas for the same proposals, the final boxes/scores/labels and the
mask logits. Then each value of ``setting=mmdet_v2`` is switched back to our paper setting's (mmdetection v1)
on the same built model, showing that each one changes the outputs: the settings differ in exactly these keys.
The module builds six R-50 detectors once (about a minute of CPU), hence ``slow``: ``make test`` runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch import nn
from torchvision.models.detection.image_list import ImageList

from carafe_exp.errors import ConfigError
from carafe_exp.models.anchors import set_anchor_rounding
from carafe_exp.models.build import build_model
from carafe_exp.models.roi_align import configure_roi_align
from carafe_exp.models.roi_heads import box_regression_loss
from carafe_exp.models.weight_import import load_model_weights
from carafe_exp.models.weight_import import mmdet as mmdet_format
from carafe_exp.paths import config_dir
from reference.mmdet_reference import (
    ReferenceOutputs,
    build_reference,
    reference_config,
    reference_l1_loss,
    reference_outputs,
    save_reference_checkpoint,
)

pytestmark = pytest.mark.slow

NUM_CLASSES = 80
HEIGHT, WIDTH = 120, 168      # not multiples of 64: the padding of both pipelines is compared too
# Test budgets, the same on both sides (the zoo's 1000 / 100 cost CPU time in the RoI heads, not coverage;
# test_the_zoo_test_and_train_settings_are_ours pins the real values).
PROPOSALS, DETECTIONS = 300, 20
# Our model's overrides per reference config: the zoo's CARAFE detectors, and the plain-FPN baseline.
OURS = {
    "faster_rcnn_carafe": ["model=faster_rcnn", "upsampler=carafe"],
    "mask_rcnn_carafe": ["model=mask_rcnn", "upsampler=carafe", "model.sites.mask_head=true"],
    "faster_rcnn_fpn": ["model=faster_rcnn", "upsampler=nearest", "model.fpn_style=torchvision"],
}
# float64 throughout: what is left is rounding (features ~1e-12 relative), so the tolerances are tight.
FEATURES = {"rtol": 1e-7, "atol": 1e-9}
BOXES = {"rtol": 0, "atol": 1e-6}


def _compose(overrides: list[str]):  # noqa: ANN202
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _image() -> torch.Tensor:
    """A smooth random RGB image (uint8), so features vary as in a photograph rather than per pixel."""
    generator = torch.Generator().manual_seed(7)
    coarse = torch.rand((1, 3, HEIGHT // 8, WIDTH // 8), generator=generator) * 255
    smooth = nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)[0]
    noise = torch.rand((3, HEIGHT, WIDTH), generator=generator) * 40 - 20
    return (smooth + noise).clamp(0, 255).round().to(torch.uint8)


@dataclass
class Pair:
    """One reference model, its checkpoint, ours loaded from it, and the reference's outputs."""

    name: str
    checkpoint: Path
    ours: nn.Module
    reference: ReferenceOutputs


def _ours(name: str, checkpoint: Path) -> nn.Module:
    # The CLI's composition: the zoo's setting, the model of the row, the file as model.weights.
    cfg = _compose(["+setting=mmdet_v2", *OURS[name], "model.backbone.weights=null", f"model.weights={checkpoint}",
                    "data=coco", "data.root=/unused", f"data.min_size={HEIGHT}", f"data.max_size={WIDTH}",
                    f"+data.rcnn.rpn_post_nms_top_n_test={PROPOSALS}", f"+data.rcnn.box_detections_per_img={DETECTIONS}",
                    "+data.rcnn.box_score_thresh=0.0"])
    model = build_model(cfg.model, upsampler=cfg.upsampler, downsampler=cfg.downsampler, num_classes=NUM_CLASSES)
    return model.double().eval()


def _pair(name: str, seed: int, directory: Path) -> Pair:
    reference = build_reference(name, seed, PROPOSALS, DETECTIONS)
    outputs = reference_outputs(reference, _image(), center_classifier=True)
    checkpoint = save_reference_checkpoint(reference, directory / f"{name}.pth")
    return Pair(name, checkpoint, _ours(name, checkpoint), outputs)


@pytest.fixture(scope="module")
def pairs(module_tmp_path: Path) -> Iterator[dict[str, Pair]]:
    directory = module_tmp_path
    built = {name: _pair(name, seed, directory) for seed, name in enumerate(OURS)}
    yield built


@dataclass
class OurOutputs:
    images: ImageList
    features: dict[str, torch.Tensor]
    fpn: list[torch.Tensor]
    rpn_scores: list[torch.Tensor]
    rpn_deltas: list[torch.Tensor]
    proposals: torch.Tensor
    roi_scores: torch.Tensor         # for the reference's proposals, background first
    roi_deltas: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor             # 1..80
    mask_logits: torch.Tensor | None  # for the reference's final boxes


def _our_outputs(model: nn.Module, reference: ReferenceOutputs) -> OurOutputs:
    """Our model's stages on the same image; the RoI stages also on the reference's own boxes."""
    image = _image().double() / 255
    with torch.no_grad():
        images, _ = model.transform([image])
        features = model.backbone(images.tensors)
        levels = list(features.values())
        rpn_scores, rpn_deltas = model.rpn.head(levels)
        proposals, _ = model.rpn(images, features)
        heads = model.roi_heads
        pooled = heads.box_roi_pool(features, [reference.proposals], images.image_sizes)
        roi_scores, roi_deltas = heads.box_predictor(heads.box_head(pooled))
        detections, _ = heads(features, proposals, images.image_sizes)
        detections = model.transform.postprocess(detections, images.image_sizes, [(HEIGHT, WIDTH)])[0]
        mask_logits = None
        if getattr(heads, "mask_predictor", None) is not None:
            masks = heads.mask_roi_pool(features, [reference.boxes], images.image_sizes)
            mask_logits = heads.mask_predictor(heads.mask_head(masks))
    return OurOutputs(images, features, levels, rpn_scores, rpn_deltas, proposals[0], roi_scores, roi_deltas,
                      detections["boxes"], detections["scores"], detections["labels"], mask_logits)


@pytest.fixture(scope="module")
def outputs(pairs: dict[str, Pair]) -> dict[str, OurOutputs]:
    return {name: _our_outputs(pair.ours, pair.reference) for name, pair in pairs.items()}


def _background_first(scores: torch.Tensor) -> torch.Tensor:
    return torch.cat([scores[:, -1:], scores[:, :-1]], dim=1)


def _same_detections(ours: OurOutputs, reference: ReferenceOutputs) -> None:
    assert torch.equal(ours.labels - 1, reference.labels)
    torch.testing.assert_close(ours.scores, reference.scores, **FEATURES)
    torch.testing.assert_close(ours.boxes, reference.boxes, **BOXES)


@pytest.mark.parametrize("name", list(OURS))
def test_every_stage_equals_mmdetection(name: str, pairs: dict[str, Pair], outputs: dict[str, OurOutputs]) -> None:
    reference, ours = pairs[name].reference, outputs[name]
    torch.testing.assert_close(ours.images.tensors, reference.batch, rtol=0, atol=1e-12)
    assert len(ours.fpn) == len(reference.fpn) == 5
    for mine, theirs in zip(ours.fpn, reference.fpn, strict=True):
        torch.testing.assert_close(mine, theirs, **FEATURES)
    for mine, theirs in zip(ours.rpn_scores + ours.rpn_deltas, reference.rpn_scores + reference.rpn_deltas,
                            strict=True):
        torch.testing.assert_close(mine, theirs, **FEATURES)
    assert len(ours.proposals) == len(reference.proposals) == PROPOSALS
    torch.testing.assert_close(ours.proposals, reference.proposals, **BOXES)
    torch.testing.assert_close(ours.roi_scores, _background_first(reference.roi_scores), **FEATURES)
    torch.testing.assert_close(ours.roi_deltas[:, 4:], reference.roi_deltas, **FEATURES)
    assert len(reference.labels) == DETECTIONS and reference.labels.unique().numel() > 3
    _same_detections(ours, reference)
    if reference.mask_logits is not None:
        assert ours.mask_logits is not None
        torch.testing.assert_close(ours.mask_logits[:, 1:], reference.mask_logits, **FEATURES)


def test_the_checkpoint_places_every_tensor_and_nothing_else(pairs: dict[str, Pair]) -> None:
    """Strict load: every one of the file's tensors lands in the model, every tensor of the model comes from it."""
    for pair in pairs.values():
        contents = torch.load(pair.checkpoint, map_location="cpu", weights_only=False)
        assert set(contents) >= {"meta", "state_dict"}
        converted = mmdet_format.convert(pair.checkpoint, pair.ours)
        ours = {k for k in pair.ours.state_dict() if not k.endswith("num_batches_tracked")}
        assert set(converted.state_dict) - {k for k in converted.state_dict if k.endswith("num_batches_tracked")} \
            == ours
        assert len(converted.state_dict) == len(contents["state_dict"]) and not converted.ignored


# (how the paper setting differs, how to switch it back on the built model): setting=mmdet_v1's values.
V1_VALUES = {
    "anchor_rounding": lambda model: set_anchor_rounding(model.rpn.anchor_generator, True),
    "roi_align_aligned": lambda model: [configure_roi_align(p, False, p.sampling_ratio) for p in _poolers(model)],
    "roi_align_sampling_ratio": lambda model: [configure_roi_align(p, _aligned(p), 2) for p in _poolers(model)],
}


def _poolers(model: nn.Module) -> list[nn.Module]:
    return [p for p in (model.roi_heads.box_roi_pool, getattr(model.roi_heads, "mask_roi_pool", None)) if p]


def _aligned(pooler: nn.Module) -> bool:
    from carafe_exp.models.roi_align import AlignedMultiScaleRoIAlign

    return isinstance(pooler, AlignedMultiScaleRoIAlign)


def _restore_v2(model: nn.Module) -> None:
    set_anchor_rounding(model.rpn.anchor_generator, False)
    for pooler in _poolers(model):
        configure_roi_align(pooler, True, 0)


def test_the_two_settings_differ_exactly_in_the_listed_keys() -> None:
    """setting=mmdet_v1 (the papers') vs setting=mmdet_v2 (the zoo's): the model keys of this test and the losses."""
    v1 = OmegaConf.to_container(_compose(["+setting=mmdet_v1", "model=mask_rcnn"]).model)
    v2 = OmegaConf.to_container(_compose(["+setting=mmdet_v2", "model=mask_rcnn"]).model)
    differing = {k for k in v1 if v1[k] != v2[k]}
    # The two box losses only act in training: test_v2_box_losses_are_mmdetections_l1 pins them.
    assert differing == set(V1_VALUES) | {"rpn_box_loss_beta", "box_loss_beta"}


@pytest.mark.parametrize("key", list(V1_VALUES))
def test_each_v1_value_changes_the_outputs_and_the_v2_value_restores_them(
        key: str, pairs: dict[str, Pair], outputs: dict[str, OurOutputs]) -> None:
    """On the built Mask R-CNN (backbone features reused): the stage the key acts on, switched and restored."""
    pair, ours = pairs["mask_rcnn_carafe"], outputs["mask_rcnn_carafe"]
    reference, model = pair.reference, pair.ours

    def stage() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            if key == "anchor_rounding":   # other anchors, other proposals
                return (model.rpn(ours.images, ours.features)[0][0],)
            heads = model.roi_heads        # the same proposals, other RoI features: box scores and masks
            boxes = heads.box_roi_pool(ours.features, [reference.proposals], ours.images.image_sizes)
            masks = heads.mask_roi_pool(ours.features, [reference.boxes], ours.images.image_sizes)
            return heads.box_predictor(heads.box_head(boxes))[0], heads.mask_predictor(heads.mask_head(masks))[:, 1:]

    expected = ((reference.proposals,) if key == "anchor_rounding" else
                (_background_first(reference.roi_scores), reference.mask_logits))
    V1_VALUES[key](model)
    try:
        switched = stage()
    finally:
        _restore_v2(model)
    for mine, theirs in zip(switched, expected, strict=True):
        assert mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    for mine, theirs in zip(stage(), expected, strict=True):
        torch.testing.assert_close(mine, theirs, **(BOXES if key == "anchor_rounding" else FEATURES))


def test_the_zoo_test_and_train_settings_are_ours(pairs: dict[str, Pair]) -> None:
    """Budgets and thresholds of mmdetection's configs vs ours under setting=mmdet_v2 (torchvision's defaults + data.rcnn)."""
    import inspect

    from torchvision.models.detection import FasterRCNN

    cfg = _compose(["+setting=mmdet_v2", "model=mask_rcnn", "data=coco", "data.root=/unused"])
    ours = {k: p.default for k, p in inspect.signature(FasterRCNN.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}
    ours.update(OmegaConf.to_container(cfg.model.rcnn, resolve=True))
    zoo = reference_config("mask_rcnn_carafe").model
    test, train = zoo.test_cfg, zoo.train_cfg
    pairs_of_values = {
        "rpn_pre_nms_top_n_test": test.rpn.nms_pre, "rpn_post_nms_top_n_test": test.rpn.max_per_img,
        "rpn_nms_thresh": test.rpn.nms.iou_threshold, "box_score_thresh": test.rcnn.score_thr,
        "box_nms_thresh": test.rcnn.nms.iou_threshold, "box_detections_per_img": test.rcnn.max_per_img,
        "rpn_pre_nms_top_n_train": train.rpn_proposal.nms_pre,
        "rpn_post_nms_top_n_train": train.rpn_proposal.max_per_img,
        "rpn_fg_iou_thresh": train.rpn.assigner.pos_iou_thr, "rpn_bg_iou_thresh": train.rpn.assigner.neg_iou_thr,
        "rpn_batch_size_per_image": train.rpn.sampler.num, "rpn_positive_fraction": train.rpn.sampler.pos_fraction,
        "box_fg_iou_thresh": train.rcnn.assigner.pos_iou_thr, "box_bg_iou_thresh": train.rcnn.assigner.neg_iou_thr,
        "box_batch_size_per_image": train.rcnn.sampler.num, "box_positive_fraction": train.rcnn.sampler.pos_fraction,
    }
    assert {k: ours[k] for k in pairs_of_values} == pairs_of_values
    assert cfg.task.module.mask_threshold == test.rcnn.mask_thr_binary
    assert zoo.rpn_head.loss_bbox.type == zoo.roi_head.bbox_head.loss_bbox.type == "L1Loss"
    assert cfg.model.rpn_box_loss_beta == cfg.model.box_loss_beta == 0.0
    model = pairs["mask_rcnn_carafe"].ours
    generator = model.rpn.anchor_generator
    anchors = zoo.rpn_head.anchor_generator
    assert [s[0] for s in generator.sizes] == [anchors.scales[0] * stride for stride in anchors.strides]
    assert all(list(r) == anchors.ratios for r in generator.aspect_ratios)
    for pooler, extractor in ((model.roi_heads.box_roi_pool, zoo.roi_head.bbox_roi_extractor),
                              (model.roi_heads.mask_roi_pool, zoo.roi_head.mask_roi_extractor)):
        assert pooler.output_size[0] == extractor.roi_layer.output_size
        assert pooler.sampling_ratio == extractor.roi_layer.sampling_ratio == 0
        assert _aligned(pooler) and extractor.roi_layer.get("aligned", True)  # mmcv RoIAlign's default


def test_v2_box_losses_are_mmdetections_l1() -> None:
    """setting=mmdet_v2's box losses (beta 0) are mmdetection's L1Loss, averaged over the sampled RoIs."""
    generator = torch.Generator().manual_seed(3)
    sampled, num_classes = 12, 5
    labels = [torch.tensor([0, 2, 0, 4, 1, 0, 3, 0, 0, 2, 0, 1])]
    predictions = torch.randn((sampled, 4 * num_classes), generator=generator, dtype=torch.float64)
    targets = [torch.randn((sampled, 4), generator=generator, dtype=torch.float64)]
    ours = box_regression_loss(predictions, labels, targets, beta=0.0)
    positive = labels[0] > 0
    chosen = predictions.reshape(sampled, num_classes, 4)[positive, labels[0][positive]]
    theirs = reference_l1_loss(chosen, targets[0][positive], average_over=sampled)
    # mmdetection divides by avg_factor + float32 eps (weight_reduce_loss): 1e-8 relative here.
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=0)


def test_a_checkpoint_needing_what_the_model_lacks_says_which_settings(pairs: dict[str, Pair]) -> None:
    carafe_file = pairs["faster_rcnn_carafe"].checkpoint
    plain_model = pairs["faster_rcnn_fpn"].ours
    before = {k: v.clone() for k, v in plain_model.state_dict().items()}
    with pytest.raises(ConfigError) as error:
        load_model_weights(plain_model, carafe_file)
    message = str(error.value)
    assert "\n" not in message and "upsampler=carafe" in message and "fpn_style=fpn_carafe" in message
    assert all(torch.equal(v, plain_model.state_dict()[k]) for k, v in before.items())


def test_an_mmdetection_v1_layout_gives_the_same_weights(pairs: dict[str, Pair], tmp_path: Path) -> None:
    """mmdetection v1 files: heads at the top level and the background as class 0 (81 classes everywhere)."""
    pair = pairs["mask_rcnn_carafe"]
    v2 = torch.load(pair.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    v1 = {}
    for key, tensor in v2.items():
        key = key.removeprefix("roi_head.")
        if key.startswith("bbox_head.fc_cls."):
            tensor = torch.cat([tensor[-1:], tensor[:-1]])
        elif key.startswith(("bbox_head.fc_reg.", "mask_head.conv_logits.")):
            rows = 4 if "fc_reg" in key else 1
            tensor = torch.cat([torch.zeros_like(tensor[:rows]), tensor])
        v1[key] = tensor
    file = tmp_path / "v1.pth"
    torch.save({"meta": {"mmdet_version": "1.0.0"}, "state_dict": v1}, file)
    from_v1 = mmdet_format.convert(file, pair.ours)
    from_v2 = mmdet_format.convert(pair.checkpoint, pair.ours)
    assert from_v1.source.startswith("an mmdetection v1") and from_v2.source.startswith("an mmdetection v2")
    assert from_v1.state_dict.keys() == from_v2.state_dict.keys()
    assert all(torch.equal(from_v1.state_dict[k], from_v2.state_dict[k]) for k in from_v2.state_dict)


def test_a_zoo_checkpoint_in_the_v1_setting_warns_to_add_mmdet_v2(pairs: dict[str, Pair],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    pair = pairs["faster_rcnn_carafe"]
    set_anchor_rounding(pair.ours.rpn.anchor_generator, True)
    try:
        with caplog.at_level("WARNING"):
            mmdet_format.convert(pair.checkpoint, pair.ours)
    finally:
        _restore_v2(pair.ours)
    assert "rounded anchors" in caplog.text and "+setting=mmdet_v2" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        mmdet_format.convert(pair.checkpoint, pair.ours)
    assert "+setting=mmdet_v2" not in caplog.text

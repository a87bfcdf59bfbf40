"""The R-CNN keys that tell mmdetection v1 (the papers) from v2 (the model zoo), on the built model.

The equivalence with mmdetection 3.3 itself is in tests/reference/test_mmdet_equivalence.py; here: the
defaults reach the built model as mmdetection v1's values, and each piece computes what its docstring cites.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from carafe_exp.errors import ConfigError
from carafe_exp.models.anchors import UnroundedAnchorGenerator, anchors_rounded, set_anchor_rounding
from carafe_exp.models.box_coder import SymmetricClampBoxCoder, use_symmetric_clamp
from carafe_exp.models.rcnn import build_faster_rcnn
from carafe_exp.models.roi_align import AlignedMultiScaleRoIAlign
from carafe_exp.models.rpn_loss import BoxLossRPN


@pytest.fixture(scope="module")
def v1_model() -> torch.nn.Module:
    return build_faster_rcnn(num_classes=2, min_size=64, max_size=96)


def test_defaults_are_mmdetection_v1s(v1_model: torch.nn.Module) -> None:
    # mmdetection v1: rounded anchors, RoIAlign(sample_num=2) without aligned, rpn SmoothL1Loss(beta=1/9).
    assert anchors_rounded(v1_model.rpn.anchor_generator)
    pooler = v1_model.roi_heads.box_roi_pool
    assert not isinstance(pooler, AlignedMultiScaleRoIAlign) and pooler.sampling_ratio == 2
    assert isinstance(v1_model.rpn, BoxLossRPN) and v1_model.rpn.box_loss_beta == pytest.approx(1 / 9)
    assert isinstance(v1_model.rpn.box_coder, SymmetricClampBoxCoder)
    assert isinstance(v1_model.roi_heads.box_coder, SymmetricClampBoxCoder)


def test_v2_values_reach_the_built_model() -> None:
    model = build_faster_rcnn(num_classes=2, min_size=64, max_size=96, roi_align_aligned=True,
                              roi_align_sampling_ratio=0, anchor_rounding=False, rpn_box_loss_beta=0.0,
                              box_loss_beta=0.0)
    assert isinstance(model.rpn.anchor_generator, UnroundedAnchorGenerator)
    pooler = model.roi_heads.box_roi_pool
    assert isinstance(pooler, AlignedMultiScaleRoIAlign) and pooler.sampling_ratio == 0
    assert model.rpn.box_loss_beta == 0.0 and model.roi_heads.box_loss_beta == 0.0


@pytest.mark.parametrize("key,value", [("roi_align_sampling_ratio", -1), ("roi_align_sampling_ratio", 1.5),
                                       ("rpn_box_loss_beta", -0.1), ("box_loss_beta", -1.0)])
def test_bad_values_are_one_line_config_errors(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key) as error:
        build_faster_rcnn(num_classes=2, min_size=64, max_size=96, **{key: value})
    assert "\n" not in str(error.value)


def test_unrounded_anchors_keep_the_exact_size_and_switch_back() -> None:
    generator = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),))
    rounded = generator.cell_anchors[0].clone()
    set_anchor_rounding(generator, False)
    exact = generator.cell_anchors[0]
    # ratio 0.5 (h/w): w = 32/sqrt(0.5) = 45.25, h = 22.63 (mmdetection v2 gen_single_level_base_anchors).
    assert exact[0].tolist() == pytest.approx([-32 / math.sqrt(0.5) / 2, -32 * math.sqrt(0.5) / 2,
                                               32 / math.sqrt(0.5) / 2, 32 * math.sqrt(0.5) / 2])
    assert torch.equal(rounded, exact.round()) and not torch.equal(rounded, exact)
    set_anchor_rounding(generator, True)
    assert torch.equal(generator.cell_anchors[0], rounded)


def test_box_decoding_clamps_shrinking_like_growing() -> None:
    """mmdetection delta2bbox: dw, dh clamped to ±log(1000/16); torchvision only from above."""
    box = torch.tensor([[0.0, 0.0, 100.0, 100.0]], dtype=torch.float64)
    codes = torch.tensor([[0.0, 0.0, -10.0, 10.0]], dtype=torch.float64)
    torchvision_box = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(codes, box)[0]
    ours = use_symmetric_clamp(BoxCoder((1.0, 1.0, 1.0, 1.0))).decode_single(codes, box)[0]
    clip = math.log(1000.0 / 16)
    assert (ours[2] - ours[0]).item() == pytest.approx(100 * math.exp(-clip), rel=1e-5)
    assert (ours[3] - ours[1]).item() == pytest.approx(100 * math.exp(clip), rel=1e-5)
    assert (torchvision_box[2] - torchvision_box[0]).item() == pytest.approx(100 * math.exp(-10.0), rel=1e-5)
    inside = torch.tensor([[0.3, -0.2, 0.5, -1.0]], dtype=torch.float64)
    assert torch.equal(use_symmetric_clamp(BoxCoder((10.0, 10.0, 5.0, 5.0))).decode_single(inside, box),
                       BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(inside, box))


def test_rpn_box_loss_beta_zero_is_l1(v1_model: torch.nn.Module) -> None:
    rpn = v1_model.rpn
    labels = [torch.tensor([1.0, 0.0, 1.0, 0.0, -1.0, 1.0])]
    generator = torch.Generator().manual_seed(0)
    deltas = torch.randn((6, 4), generator=generator)
    targets = [torch.randn((6, 4), generator=generator)]
    objectness = torch.randn(6, generator=generator)
    try:
        rpn.box_loss_beta = 0.0
        torch.manual_seed(0)
        _, l1 = rpn.compute_loss(objectness, deltas, labels, targets)
        rpn.box_loss_beta = 1 / 9
        torch.manual_seed(0)
        _, smooth = rpn.compute_loss(objectness, deltas, labels, targets)
    finally:
        rpn.box_loss_beta = 1 / 9
    positive = labels[0] == 1
    sampled = (labels[0] >= 0).sum()
    expected = (deltas[positive] - targets[0][positive]).abs().sum() / sampled
    torch.testing.assert_close(l1, expected)
    assert not torch.allclose(smooth, expected)


def test_configure_roi_align_switches_both_ways() -> None:
    from carafe_exp.models.roi_align import configure_roi_align

    pooler = MultiScaleRoIAlign(["0"], 7, 2)
    configure_roi_align(pooler, True, 0)
    assert isinstance(pooler, AlignedMultiScaleRoIAlign) and pooler.sampling_ratio == 0
    configure_roi_align(pooler, False, 2)
    assert type(pooler) is MultiScaleRoIAlign and pooler.sampling_ratio == 2

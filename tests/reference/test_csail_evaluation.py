"""Both evaluation pipelines give the same mIoU and pixel accuracy on the same images and weights.

CSAIL's (mit-semseg 1.0.0): ``ValDataset`` (PIL bilinear resize of the short side to ``imgSizes``, long side
≤ ``imgMaxSize``, rounded up to a multiple of 32 by resizing), ``SegmentationModule`` with ``segSize``
(logits resized to the label, softmax), argmax, ``accuracy`` / ``intersectionAndUnion`` accumulated as
its ``eval.py`` ``evaluate`` does (the loop is transcribed: ``eval.py`` is a script, not in the package).
Ours: the ADE20K data module's test loader and :class:`SegmentationTask`'s evaluation and metric.

CSAIL's ``iou.mean()`` averages all 150 classes; ours averages the classes with a non-empty union
(mmsegmentation). On ADE20K val every class is labelled, so they agree there; on a few images they are
compared over the classes that occur, and the per-class areas are compared exactly.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from reference_packages import import_reference
from torch import nn

from carafe_exp.data.ade20k import ADE20KDataModule, list_pairs
from carafe_exp.data.ade20k_sample import write_ade20k_sample
from carafe_exp.models.build import build_model
from carafe_exp.paths import config_dir
from carafe_exp.tasks.segmentation import SegmentationTask

NUM_CLASSES = 150
SHORT_SIDE, MAX_LONG_SIDE = 80, 160


def _reference_model(directory: Path) -> nn.Module:
    """CSAIL's R-18 (deep stem) + upernet decoder with random weights and BN statistics, saved as CSAIL does."""
    models = import_reference("mit_semseg.models.models")
    resnet = import_reference("mit_semseg.models.resnet")
    torch.manual_seed(0)
    encoder = models.Resnet(resnet.resnet18(pretrained=False))
    # eval.py builds the decoder with use_softmax=True.
    decoder = models.UPerNet(num_class=NUM_CLASSES, fc_dim=512, use_softmax=True, fpn_inplanes=(64, 128, 256, 512),
                             fpn_dim=512)
    decoder.apply(models.ModelBuilder.weights_init)
    for module in [*encoder.modules(), *decoder.modules()]:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.normal_(0.0, 0.2)
    # Favour the label values the sample uses (ADE20K 1..21, i.e. classes 0..20), so that random weights
    # predict some pixels right and some wrong, not a class the labels never hold.
    decoder.conv_last[1].bias.data[:21] += 4.0
    directory.mkdir()
    torch.save(encoder.state_dict(), directory / "encoder_epoch_1.pth")
    torch.save(decoder.state_dict(), directory / "decoder_epoch_1.pth")
    crit = nn.NLLLoss(ignore_index=-1)
    return models.SegmentationModule(encoder, decoder, crit).eval()


def _csail_evaluate(module: nn.Module, root: Path) -> tuple[np.ndarray, np.ndarray, float]:
    dataset_module = import_reference("mit_semseg.dataset")
    utils = import_reference("mit_semseg.utils")
    records = [{"fpath_img": str(image.relative_to(root)), "fpath_segm": str(label.relative_to(root))}
               for image, label in list_pairs(root, "validation")]
    opt = SimpleNamespace(imgSizes=(SHORT_SIDE,), imgMaxSize=MAX_LONG_SIDE, padding_constant=32)
    dataset = dataset_module.ValDataset(str(root), records, opt)
    acc_meter, intersection_meter, union_meter = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    for index in range(len(dataset)):  # eval.py evaluate()
        batch = dataset[index]
        seg_label = batch["seg_label"][0].numpy()
        seg_size = (seg_label.shape[0], seg_label.shape[1])
        scores = torch.zeros(1, NUM_CLASSES, *seg_size)
        with torch.no_grad():
            for image in batch["img_data"]:
                scores = scores + module({"img_data": image}, segSize=seg_size) / len(opt.imgSizes)
        pred = torch.max(scores, dim=1)[1].squeeze(0).numpy()
        acc, pix = utils.accuracy(pred, seg_label)
        intersection, union = utils.intersectionAndUnion(pred, seg_label, NUM_CLASSES)
        acc_meter.update(acc, pix)
        intersection_meter.update(intersection)
        union_meter.update(union)
    return intersection_meter.sum, union_meter.sum, float(acc_meter.average())


def _our_evaluate(weights: Path, root: Path) -> dict[str, torch.Tensor]:
    node = OmegaConf.load(config_dir() / "model" / "upernet.yaml")
    node.backbone.depth, node.backbone.stem, node.weights = 18, "deep", str(weights)
    model = build_model(node, upsampler="bilinear", downsampler="conv", num_classes=NUM_CLASSES)
    task = SegmentationTask(model, optimizer={"name": "sgd", "lr": 0.02}, schedule={"policy": "poly"}).eval()
    data = ADE20KDataModule(root, num_workers=0, persistent_workers=False, test_short_side=SHORT_SIDE,
                            max_long_side=MAX_LONG_SIDE)
    with torch.no_grad():
        for batch in data.test_dataloader():
            task._evaluate("test", batch, timed=False)
    areas = task.metrics["test"].areas()
    values = task.metrics["test"].compute()
    return {"intersection": areas.intersect, "union": areas.union, **values}


def test_miou_and_pixel_accuracy_of_both_pipelines_are_equal(tmp_path: Path) -> None:
    root = tmp_path / "ade20k"
    write_ade20k_sample(root, num_train=1, num_val=4, min_side=72, max_side=120, seed=3)
    reference = _reference_model(tmp_path / "ckpt")
    intersection, union, csail_accuracy = _csail_evaluate(reference, root)
    ours = _our_evaluate(tmp_path / "ckpt", root)

    np.testing.assert_array_equal(ours["intersection"].numpy(), intersection)
    np.testing.assert_array_equal(ours["union"].numpy(), union)
    occurring = union > 0
    csail_miou = 100 * float((intersection[occurring] / union[occurring]).mean())
    assert float(ours["mIoU"]) == pytest_approx(csail_miou)
    assert float(ours["pixel_acc"]) == pytest_approx(100 * csail_accuracy)
    # Not a degenerate case: several classes predicted, some right and some wrong.
    assert occurring.sum() > 3 and 0 < csail_accuracy < 1


def pytest_approx(value: float):
    # CSAIL adds 1e-10 to its denominators.
    return pytest.approx(value, rel=1e-6, abs=1e-6)

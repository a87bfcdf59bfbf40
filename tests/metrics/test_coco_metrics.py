"""COCO evaluation: perfect predictions give AP 100, others equal pycocotools run directly, 2 ranks equal 1."""

from __future__ import annotations

import contextlib
import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from carafe_exp.data.coco import CocoDetection, annotation_path, load_coco
from carafe_exp.data.coco_sample import write_coco_sample
from carafe_exp.metrics.coco import CocoEvaluator, detections_to_coco, evaluate_coco, metric_names

SAMPLE = dict(num_train=1, num_val=16, min_side=112, max_side=128, max_objects=4, crowd_prob=0.5, seed=5)


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco_eval") / "sample"
    write_coco_sample(root, **SAMPLE)
    return root


def _predictions(root: Path, perturb: bool) -> tuple[list[int], list[dict[str, torch.Tensor]], list[int]]:
    """Ground truth as model outputs (contiguous labels, xyxy boxes, (R, 1, H, W) mask probabilities)."""
    dataset = CocoDetection(root, "val2017", with_masks=True)
    generator = np.random.default_rng(0)
    image_ids, predictions = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        boxes, labels, masks = target["boxes"].clone(), target["labels"].clone(), target["masks"].float()[:, None]
        scores = torch.ones(len(boxes))
        if perturb:
            boxes += torch.from_numpy(generator.normal(0, 3, size=boxes.shape)).float()
            scores = torch.from_numpy(generator.uniform(0.1, 1.0, size=len(boxes))).float()
            flip = torch.from_numpy(generator.random(len(labels)) < 0.2)
            labels = torch.where(flip, labels % 4 + 1, labels)
            masks = torch.roll(masks, shifts=2, dims=-1) * 0.8
            # A false positive everywhere (it must cost precision, as in pycocotools).
            boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 30.0, 30.0]])])
            labels = torch.cat([labels, torch.tensor([2])])
            scores = torch.cat([scores, torch.tensor([0.95])])
            extra = torch.zeros(1, 1, *masks.shape[-2:])
            extra[..., :30, :30] = 1.0
            masks = torch.cat([masks, extra])
        image_ids.append(target["image_id"])
        predictions.append({"boxes": boxes, "labels": labels, "scores": scores, "masks": masks})
    return image_ids, predictions, dataset.category_ids


def test_perfect_predictions_give_ap_100(sample_root: Path) -> None:
    image_ids, predictions, categories = _predictions(sample_root, perturb=False)
    evaluator = CocoEvaluator(annotation_path(sample_root, "val2017"), categories, iou_types=("bbox", "segm"))
    evaluator.update(image_ids, predictions)
    metrics = evaluator.compute()
    assert set(metrics) == set(metric_names(("bbox", "segm")))
    for name, value in metrics.items():
        assert value == pytest.approx(100.0), name


def test_perturbed_predictions_equal_pycocotools_directly(sample_root: Path) -> None:
    image_ids, predictions, categories = _predictions(sample_root, perturb=True)
    results = [r for image_id, p in zip(image_ids, predictions) for r in detections_to_coco(image_id, p, categories)]
    ours = evaluate_coco(annotation_path(sample_root, "val2017"), results, ("bbox", "segm"))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_path(sample_root, "val2017")))
        for iou_type in ("bbox", "segm"):
            dt = gt.loadRes([dict(r) for r in results])
            reference = COCOeval(gt, dt, iou_type)
            reference.evaluate()
            reference.accumulate()
            reference.summarize()
            expected = [max(v, 0.0) * 100 for v in reference.stats[:6]]
            got = [ours[f"{iou_type}/{k}"] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
            assert got == pytest.approx(expected, abs=1e-9)
            assert 5.0 < got[0] < 95.0  # really perturbed, really matched


def test_no_predictions_give_zero() -> None:
    assert all(v == 0.0 for v in evaluate_coco(COCO(), [], ("bbox",)).values())


def test_evaluation_is_restricted_to_the_images_seen(sample_root: Path) -> None:
    image_ids, predictions, categories = _predictions(sample_root, perturb=False)
    evaluator = CocoEvaluator(load_coco(annotation_path(sample_root, "val2017")), categories)
    evaluator.update(image_ids[:5], predictions[:5])
    assert evaluator.compute()["bbox/AP"] == pytest.approx(100.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, root: str, queue: mp.Queue) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image_ids, predictions, categories = _predictions(Path(root), perturb=True)
        # DistributedSampler's split: rank r takes every world-th image, padded by repeating the first ones.
        indices = list(range(len(image_ids)))
        indices += indices[: (-len(indices)) % world + world]  # pad: some images are seen twice
        mine = indices[rank::world]
        evaluator = CocoEvaluator(annotation_path(Path(root), "val2017"), categories, iou_types=("bbox", "segm"))
        evaluator.update([image_ids[i] for i in mine], [predictions[i] for i in mine])
        queue.put((rank, evaluator.compute()))
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_same_metrics_as_one(sample_root: Path) -> None:
    image_ids, predictions, categories = _predictions(sample_root, perturb=True)
    single = CocoEvaluator(annotation_path(sample_root, "val2017"), categories, iou_types=("bbox", "segm"))
    single.update(image_ids, predictions)
    expected = single.compute()
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_rank_main, args=(2, _free_port(), str(sample_root), queue), nprocs=2, join=True,
                       start_method="spawn")
    results = dict(queue.get(timeout=60) for _ in range(2))
    for rank in (0, 1):
        assert results[rank] == pytest.approx(expected), rank

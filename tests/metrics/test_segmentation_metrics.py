"""mIoU, pixel accuracy and mAcc (carafe_exp.metrics.segmentation) against hand-computed values and DDP.

The definitions are mmsegmentation's IoUMetric (``mmseg/evaluation/metrics/iou_metric.py``:
areas summed over the dataset, ignored label pixels removed from prediction and label, IoU
nan-mean, aAcc = Σ intersect / Σ label) and CSAIL's ``utils.intersectionAndUnion``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from carafe_exp.metrics.segmentation import (
    SegmentationMetric,
    class_accuracy,
    class_iou,
    intersect_and_union,
    mean_accuracy,
    mean_iou,
    pixel_accuracy,
)

IGNORE = 255
# Two rows of four pixels, five classes. Class 3 appears nowhere (its IoU is nan and does not
# count); class 4 is predicted once but never labelled (IoU 0, which does count); two pixels are
# ignored, one of them predicted as class 1.
PRED = torch.tensor([[0, 0, 1, 4], [1, 2, 2, 0]])
TARGET = torch.tensor([[0, 1, 1, 0], [IGNORE, 2, 0, IGNORE]])


def test_hand_computed_areas_with_ignored_pixels_and_an_absent_class() -> None:
    areas = intersect_and_union(PRED, TARGET, num_classes=5, ignore_index=IGNORE)
    # Valid pixels: (p0,t0) (p0,t1) (p1,t1) (p4,t0) (p2,t2) (p2,t0).
    assert areas.intersect.tolist() == [1, 1, 1, 0, 0]
    assert areas.pred.tolist() == [2, 1, 2, 0, 1]
    assert areas.label.tolist() == [3, 2, 1, 0, 0]
    assert areas.union.tolist() == [4, 2, 2, 0, 1]
    iou = class_iou(areas)
    assert iou[:3].tolist() == [0.25, 0.5, 0.5] and math.isnan(iou[3]) and iou[4] == 0.0
    accuracy = class_accuracy(areas)
    assert accuracy[:3].tolist() == pytest.approx([1 / 3, 1 / 2, 1.0]) and accuracy[3:].isnan().all()
    assert mean_iou(areas) == pytest.approx((0.25 + 0.5 + 0.5 + 0.0) / 4)
    assert mean_accuracy(areas) == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert pixel_accuracy(areas) == pytest.approx(3 / 6)


def test_metric_reports_percent_and_sums_areas_over_batches_not_per_image_means() -> None:
    metric = SegmentationMetric(num_classes=5, ignore_index=IGNORE)
    metric.update(PRED[:1], TARGET[:1])
    metric.update(PRED[1:], TARGET[1:])
    values = metric.compute()
    assert float(values["mIoU"]) == pytest.approx(31.25)
    assert float(values["pixel_acc"]) == pytest.approx(50.0)
    assert float(values["mAcc"]) == pytest.approx(100 * 11 / 18)
    assert values["IoU"][:3].tolist() == pytest.approx([25.0, 50.0, 50.0])
    assert values["label_area"].tolist() == [3, 2, 1, 0, 0]
    # Averaging the two rows' own mIoUs would give ((1/3 + 1/2 + 0) / 3 + (0 + 1/2) / 2) / 2 instead.
    per_image = [mean_iou(intersect_and_union(PRED[i], TARGET[i], 5, IGNORE)) for i in range(2)]
    assert per_image == pytest.approx([(1 / 3 + 1 / 2) / 3, 0.25])


def test_random_maps_match_a_pixel_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 7, (3, 9, 11), generator=generator)
    target = torch.randint(0, 7, (3, 9, 11), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.2] = IGNORE
    areas = intersect_and_union(pred, target, 7, IGNORE)
    for c in range(7):
        valid = [(int(p), int(t)) for p, t in zip(pred.flatten(), target.flatten()) if t != IGNORE]
        inter = sum(p == c and t == c for p, t in valid)
        union = sum(p == c or t == c for p, t in valid)
        assert int(areas.intersect[c]) == inter and int(areas.union[c]) == union


def test_nothing_labelled_gives_nan_not_a_crash() -> None:
    areas = intersect_and_union(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), IGNORE), 3, IGNORE)
    assert areas.label.sum() == 0 and math.isnan(pixel_accuracy(areas)) and math.isnan(mean_iou(areas))


@pytest.mark.parametrize("pred, target, message", [
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "differ in shape"),
    (torch.full((2, 2), 5), torch.zeros(2, 2, dtype=torch.long), "pred has class ids outside"),
    (torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 9), "target has class ids outside"),
    (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), "integer class maps"),
])
def test_bad_inputs_are_one_clear_error(pred: torch.Tensor, target: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        intersect_and_union(pred, target, 5, IGNORE)


_DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from carafe_exp.metrics.segmentation import SegmentationMetric

    def data():
        generator = torch.Generator().manual_seed(1)
        pred = torch.randint(0, 6, (5, 13, 17), generator=generator)
        target = torch.randint(0, 6, (5, 13, 17), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.3] = 255
        target[target == 4] = 255  # class 4 only ever predicted
        return pred, target

    def worker(rank, world, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        pred, target = data()
        metric = SegmentationMetric(6)
        for i in range(rank, len(pred), world):  # uneven shares: 3 images and 2 images
            metric.update(pred[i], target[i])
        values = metric.compute()
        if rank == 0:
            with open(out, "w") as handle:
                json.dump({k: v.tolist() for k, v in values.items()}, handle)
        dist.destroy_process_group()

    if __name__ == "__main__":
        port, out = int(sys.argv[1]), sys.argv[2]
        mp.spawn(worker, args=(2, port, out), nprocs=2)
        pred, target = data()
        single = SegmentationMetric(6)
        single.update(pred, target)
        with open(out + ".single", "w") as handle:
            json.dump({k: v.tolist() for k, v in single.compute().items()}, handle)
""")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_ddp_processes_report_exactly_what_one_reports(tmp_path: Path) -> None:
    script = tmp_path / "ddp_metric.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "values.json"
    result = subprocess.run([sys.executable, str(script), str(_free_port()), str(out)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two, one = json.loads(out.read_text()), json.loads(Path(f"{out}.single").read_text())
    assert two.keys() == one.keys() == {"mIoU", "pixel_acc", "mAcc", "IoU", "label_area"}
    assert two["label_area"] == one["label_area"]
    for key in ("mIoU", "pixel_acc", "mAcc"):
        assert two[key] == one[key], key  # exact: areas are integer counts summed across processes
    assert [v for v in two["IoU"] if not math.isnan(v)] == [v for v in one["IoU"] if not math.isnan(v)]
    assert 0 < one["mIoU"] < 100 and one["IoU"][4] == 0.0

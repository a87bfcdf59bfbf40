"""The detection task under Lightning: train, evaluate with COCOeval, fps, checkpoints, lr scaling, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from pycocotools import mask as mask_utils

from carafe_exp.data.coco import CocoDataModule
from carafe_exp.metrics.coco import detections_to_coco, metric_names
from carafe_exp.models.rcnn import build_faster_rcnn, build_mask_rcnn
from carafe_exp.tasks.detection import DetectionTask

SAMPLE = dict(num_train=6, num_val=5, min_side=112, max_side=128, max_objects=3, crowd_prob=0.3, seed=11)
RCNN = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, box_detections_per_img=20)
OPTIMIZER = dict(name="sgd", lr=0.02, base_batch_size=16, momentum=0.9, weight_decay=1e-4)
SCHEDULE = dict(policy="constant", warmup_iters=2, warmup_factor=0.1)
# The detection task's clip (conf/task/detection.yaml; mmdetection v1's grad_clip max_norm=35): a backbone
# trained from scratch with mmdetection's head init diverges without it.
GRAD_CLIP = 35.0


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detection_task") / "coco"
    CocoDataModule(root, sample=SAMPLE, num_workers=0)  # generate once for the module
    return root


def _datamodule(root: Path, batch_size: int = 2) -> CocoDataModule:
    return CocoDataModule(root, batch_size=batch_size, num_workers=0, min_size=96, max_size=128, sample=SAMPLE)


def _task(kind: str = "faster_rcnn", upsampler: str = "nearest", seed: int = 0) -> DetectionTask:
    torch.manual_seed(seed)
    build = build_mask_rcnn if kind == "mask_rcnn" else build_faster_rcnn
    sites = {"fpn": True, "mask_head": True} if kind == "mask_rcnn" else {"fpn": True}
    model = build(4, upsampler=upsampler, sites=sites, min_size=96, max_size=128, rcnn=RCNN)
    return DetectionTask(model, OPTIMIZER, SCHEDULE, grad_clip_norm=GRAD_CLIP)


def _trainer(**kwargs: object) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


@pytest.mark.parametrize("kind", ["faster_rcnn", "mask_rcnn"])
def test_fit_and_test_report_coco_metrics_and_fps(coco_root: Path, kind: str) -> None:
    task = _task(kind, upsampler="carafe" if kind == "faster_rcnn" else "nearest")
    datamodule = _datamodule(coco_root)
    trainer = _trainer()
    trainer.fit(task, datamodule)
    assert "val/bbox/AP" in trainer.callback_metrics
    assert datamodule.with_masks == (kind == "mask_rcnn")
    # SGD with the papers' lr 0.02 at batch 16, scaled linearly to this run's batch of 2.
    (optimizer,) = trainer.optimizers
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.02 * 2 / 16)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-4)
    (results,) = trainer.test(task, datamodule)
    iou_types = ("bbox", "segm") if kind == "mask_rcnn" else ("bbox",)
    assert set(results) == {f"test/{name}" for name in metric_names(iou_types)} | {"test/fps"}
    assert results["test/fps"] > 0
    assert all(0.0 <= results[f"test/{name}"] <= 100.0 for name in metric_names(iou_types))


def test_loss_falls_over_a_few_steps(coco_root: Path) -> None:
    task = _task()
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            losses.append(float(outputs["loss"]))

    trainer = _trainer(max_epochs=-1, max_steps=8, overfit_batches=1, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(task, _datamodule(coco_root))
    assert len(losses) == 8
    # Sampled anchors and RoIs make single steps noisy; compare the ends of the run.
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, " ".join(f"{v:.3f}" for v in losses)


def test_gradient_clip_bounds_the_step(coco_root: Path) -> None:
    torch.manual_seed(0)
    model = build_faster_rcnn(4, min_size=96, max_size=128, rcnn=RCNN)
    task = DetectionTask(model, dict(OPTIMIZER, weight_decay=0.0), dict(policy="constant"), grad_clip_norm=1e-3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    _trainer(max_epochs=-1, max_steps=1, limit_val_batches=0).fit(task, _datamodule(coco_root))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # First SGD step: the update is lr x the clipped gradient, so its norm is at most lr x 1e-3.
    assert 0 < float((after - before).norm()) <= 0.02 * 2 / 16 * 1e-3 * 1.001


def test_checkpoint_round_trip(coco_root: Path, tmp_path: Path) -> None:
    task = _task("mask_rcnn", upsampler="carafe")
    datamodule = _datamodule(coco_root)
    trainer = _trainer(limit_val_batches=0)
    trainer.fit(task, datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    fresh = _task("mask_rcnn", upsampler="carafe", seed=1)
    restored = DetectionTask.load_from_checkpoint(path, model=fresh.model)
    assert restored.optimizer_cfg == OPTIMIZER and restored.schedule_cfg == SCHEDULE
    for key, value in task.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    datamodule.setup("test")
    images, _ = next(iter(datamodule.test_dataloader()))
    task.eval(), restored.eval()
    with torch.no_grad():
        expected, got = task(images), restored(images)
    for a, b in zip(expected, got):
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    # Resuming the training from the checkpoint continues at its step.
    resumed = _trainer(max_epochs=2, limit_val_batches=0)
    resumed.fit(_task("mask_rcnn", upsampler="carafe", seed=2), _datamodule(coco_root), ckpt_path=path)
    assert resumed.global_step == 4


_DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
sys.path.insert(0, {tests_dir!r})
from test_detection_task import _task
from carafe_exp.data.coco import CocoDataModule
from pathlib import Path

devices = int(sys.argv[1])
task = _task("mask_rcnn")
task.load_state_dict(torch.load(sys.argv[2], weights_only=True))
trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
# One image per batch: padding a batch to its largest image changes border features slightly.
datamodule = CocoDataModule(Path({root!r}), batch_size=1, num_workers=0, min_size=96, max_size=128)
(results,) = trainer.test(task, datamodule)
if trainer.is_global_zero:
    Path(sys.argv[3]).write_text(json.dumps(results))
"""


def _annotations_from_predictions(task: DetectionTask, source_root: Path, root: Path, min_score: float) -> int:
    """A copy of the val split whose ground truth is the model's own confident predictions (boxes and masks).

    The model is real and untrained; with its predictions as the annotations, evaluation has true
    positives to find, so AP is far from zero and an image lost or counted twice changes it.
    """
    datamodule = _datamodule(source_root, batch_size=1)
    datamodule.setup("test")
    source = json.loads(datamodule.annotation_file("test").read_text())
    task.eval()
    annotations = []
    with torch.no_grad():
        for images, targets in datamodule.test_dataloader():
            (prediction,) = task(images)
            image_id = int(targets[0]["image_id"])
            for result in detections_to_coco(image_id, prediction, datamodule.label_to_category_id):
                area = float(mask_utils.area(result["segmentation"]))
                if result["score"] >= min_score and area >= 4 and min(result["bbox"][2:]) >= 1:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                        "category_id": result["category_id"], "bbox": result["bbox"],
                                        "segmentation": result["segmentation"], "area": area})
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").symlink_to(source_root / "val2017")
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": source["images"], "categories": source["categories"], "annotations": annotations}))
    return len({a["image_id"] for a in annotations})


@pytest.mark.slow
def test_evaluation_on_two_ddp_processes_equals_one(coco_root: Path, tmp_path: Path) -> None:
    task = _task("mask_rcnn")
    weights = tmp_path / "weights.pt"
    torch.save(task.state_dict(), weights)
    # Untrained, the model scores every class about alike: its upper half of scores becomes the ground truth.
    root = tmp_path / "coco"
    images_with_objects = _annotations_from_predictions(task, coco_root, root, min_score=0.2)
    assert images_with_objects == SAMPLE["num_val"]
    script = tmp_path / "ddp_eval.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT.format(tests_dir=str(Path(__file__).parent), root=str(root))))
    outputs = {}
    for devices in (1, 2):
        out = tmp_path / f"metrics_{devices}.json"
        result = subprocess.run([sys.executable, str(script), str(devices), str(weights), str(out)],
                                capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        outputs[devices] = json.loads(out.read_text())
    # Real matches, so the comparison cannot pass on empty predictions.
    assert outputs[1]["test/bbox/AP"] > 50 and outputs[1]["test/segm/AP"] > 50, outputs[1]
    # 5 val images: the DistributedSampler pads rank 1 with a repeat, which must be counted once.
    for name in metric_names(("bbox", "segm")):
        assert outputs[2][f"test/{name}"] == pytest.approx(outputs[1][f"test/{name}"], abs=1e-6), name

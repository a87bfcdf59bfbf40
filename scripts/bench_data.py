"""Data pipelines in training images per second per worker: our readers beside torchvision's.

A DataLoader worker is one process running ``dataset[i]`` (and the collate function) on one
torch thread, so a pipeline's throughput per worker is measured in this process with
``torch.set_num_threads(1)`` and no DataLoader. Each dataset is generated once in its real
on-disk format (the project's sample writers, at the real datasets' image sizes) under
``--data-dir`` (default: the sample cache, ``$CARAFE_EXP_CACHE``), then read with the training
transforms of ``task=detection`` / ``segmentation`` / ``inpainting``:

- ``coco`` (Faster R-CNN: boxes and labels): our ``CocoDetection`` (validation of every box,
  crowd and degenerate boxes dropped, to-tensor, random flip) against torchvision's
  ``datasets.CocoDetection`` wrapped for transforms v2 with its detection reference's training
  pipeline (``ToImage``, ``RandomHorizontalFlip``, ``ToDtype(float32, scale=True)``,
  ``ConvertBoundingBoxFormat(XYXY)``, ``SanitizeBoundingBoxes``, ``ToPureTensor``);
- ``coco_masks`` (Mask R-CNN): the same with instance masks decoded on both sides;
- ``ade20k``: our ADE20K reader and its training collate (one random short side per batch of 2,
  resize, flip, normalise, pad to 32), batches of 2;
- ``places``: our Places reader with its training transform (resize, random crop, [-1, 1]) and a
  fresh free-form mask per image.

torchvision has no ADE20K or Places pipeline, so those two (and COCO too) are set beside the
*decode floor*: opening and decoding the same files with PIL into arrays and nothing else. The
passes over a dataset are interleaved (ours, peer, peer, ours, ...) and the median pass gives
images/s; the ratio is ours / peer in time (> 1: ours is slower). Writes
``benchmarks/results/data_<date>.json`` and prints a table.

    python scripts/bench_data.py [--images 32] [--rounds 5] [--pipelines coco,coco_masks,ade20k,places]
                                    [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import describe_machine  # scripts/machine.py, beside this script
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
try:
    import carafe_exp  # noqa: F401
except ImportError:  # a bare checkout without `pip install`: use the source tree
    sys.path.insert(0, str(REPO / "src"))
from carafe_exp.data.ade20k import PAPER_MAX_LONG_SIDE, PAPER_TRAIN_SHORT_SIDES, ADE20KSegmentation
from carafe_exp.data.ade20k_sample import write_ade20k_sample
from carafe_exp.data.coco import CocoDetection, annotation_path
from carafe_exp.data.coco_sample import write_coco_sample
from carafe_exp.data.detection_transforms import build_detection_transforms
from carafe_exp.data.masks import FreeFormMaskSettings
from carafe_exp.data.places import PlacesDataModule, PlacesImages, list_images
from carafe_exp.data.places_sample import write_places_sample
from carafe_exp.data.sample_cache import default_cache_dir, ensure_sample
from carafe_exp.data.segmentation_transforms import TrainBatch

PIPELINES = ("coco", "coco_masks", "ade20k", "places")
TARGET_MAX_RATIO = 1.05
# COCO 2017 images are at most 640 px on the long side; ADE20K's training images are mostly
# 512-683 px; Places365-Standard's are 256x256.
COCO_SIDES = (480, 640)
ADE20K_SIDES = (384, 640)
ADE20K_BATCH = 2
PLACES_SIZE = 256

Pass = Callable[[], None]


def generate(data_dir: Path, images: int) -> dict[str, Path]:
    """The three datasets under ``data_dir`` (written once, reused while the parameters match)."""
    coco = ensure_sample(data_dir / f"coco_{images}", write_coco_sample,
                         {"num_train": images, "num_val": 1, "min_side": COCO_SIDES[0], "max_side": COCO_SIDES[1],
                          "max_objects": 8, "seed": 0})
    ade20k = ensure_sample(data_dir / f"ade20k_{images}", write_ade20k_sample,
                           {"num_train": images, "num_val": 1, "min_side": ADE20K_SIDES[0],
                            "max_side": ADE20K_SIDES[1], "seed": 0})
    places = ensure_sample(data_dir / f"places_{images}", write_places_sample,
                           {"num_train": images, "num_val": 1, "seed": 0})
    return {"coco": coco, "ade20k": ade20k, "places": places}


def read_all(dataset: Any, indices: list[int]) -> Pass:
    def run() -> None:
        torch.manual_seed(0)  # the same flips (and masks) on every pass
        for index in indices:
            dataset[index]

    return run


def decode_files(paths: list[Path]) -> Pass:
    """The decode floor: PIL decodes each file into an array, nothing more."""
    def run() -> None:
        for path in paths:
            with Image.open(path) as image:
                np.asarray(image.convert("RGB") if image.mode not in ("L", "P") else image)

    return run


def torchvision_coco(root: Path, with_masks: bool) -> Any:
    """torchvision's CocoDetection, wrapped for transforms v2, with its detection reference's training transforms."""
    from torchvision import datasets, tv_tensors
    from torchvision.transforms import v2

    transforms = v2.Compose([v2.ToImage(), v2.RandomHorizontalFlip(p=0.5), v2.ToDtype(torch.float32, scale=True),
                             v2.ConvertBoundingBoxFormat(tv_tensors.BoundingBoxFormat.XYXY),
                             v2.SanitizeBoundingBoxes(), v2.ToPureTensor()])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        dataset = datasets.CocoDetection(str(root / "train2017"), str(annotation_path(root, "train2017")),
                                         transforms=transforms)
    keys = {"boxes", "labels", "image_id"} | ({"masks"} if with_masks else set())
    return datasets.wrap_dataset_for_transforms_v2(dataset, target_keys=keys)


def coco_pipelines(root: Path, with_masks: bool) -> dict[str, Pass]:
    ours = CocoDetection(root, "train2017", transforms=build_detection_transforms(train=True), with_masks=with_masks,
                         remove_empty=True)
    reference = torchvision_coco(root, with_masks)
    # Both read the images our reader trains on (torchvision's keeps images without a usable box).
    position = {image_id: index for index, image_id in enumerate(reference.ids)}
    files = [root / "train2017" / ours.coco.imgs[i]["file_name"] for i in ours.ids]
    return {"ours": read_all(ours, list(range(len(ours)))),
            "torchvision": read_all(reference, [position[i] for i in ours.ids]),
            "decode_floor": decode_files(files), "images": len(ours)}


def ade20k_pipelines(root: Path) -> dict[str, Pass]:
    dataset = ADE20KSegmentation(root, "training")
    collate = TrainBatch(PAPER_TRAIN_SHORT_SIDES, PAPER_MAX_LONG_SIDE)
    count = len(dataset) - len(dataset) % ADE20K_BATCH

    def ours() -> None:
        torch.manual_seed(0)
        for start in range(0, count, ADE20K_BATCH):
            collate([dataset[i] for i in range(start, start + ADE20K_BATCH)])

    files = [path for pair in dataset.pairs[:count] for path in pair]
    return {"ours": ours, "decode_floor": decode_files(files), "images": count}


def places_pipelines(root: Path) -> dict[str, Pass]:
    # The training transform exactly as task=inpainting builds it (PlacesDataModule.train_transform).
    module = PlacesDataModule(str(root), image_size=PLACES_SIZE)
    paths = list_images(root, module.train_list, module.train_dir)
    dataset = PlacesImages(paths, module.train_transform(), PLACES_SIZE, FreeFormMaskSettings())
    return {"ours": read_all(dataset, list(range(len(paths)))), "decode_floor": decode_files(paths),
            "images": len(paths)}


def interleave(passes: dict[str, Pass], rounds: int, label: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in passes}
    names = list(passes)
    for name in names:  # warm-up: file cache, lazy imports, allocator
        passes[name]()
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            passes[name]()
            times[name].append(time.perf_counter() - start)
        print(f"{label}: round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def summarize(times: dict[str, list[float]], images: int) -> dict:
    medians = {name: statistics.median(values) for name, values in times.items()}
    row: dict[str, Any] = {"images": images,
                           "images_per_s": {name: images / value for name, value in medians.items()},
                           "pass_s": times}
    for peer in ("torchvision", "decode_floor"):
        if peer in times:
            row[f"ratio_ours_to_{peer}"] = medians["ours"] / medians[peer]
            row[f"ratio_ours_to_{peer}_per_round_median"] = statistics.median(
                o / p for o, p in zip(times["ours"], times[peer]))
    if "torchvision" in times:
        row["within_target"] = row["ratio_ours_to_torchvision"] <= TARGET_MAX_RATIO
    return row


def format_table(results: dict[str, dict]) -> str:
    header = f"{'pipeline':<12}{'ours img/s':>12}{'tv img/s':>10}{'ours/tv':>9}{'decode img/s':>14}{'ours/decode':>13}"
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        rates = row["images_per_s"]
        tv = f"{rates['torchvision']:>10.1f}{row['ratio_ours_to_torchvision']:>9.3f}" if "torchvision" in rates \
            else f"{'-':>10}{'-':>9}"
        lines.append(f"{name:<12}{rates['ours']:>12.1f}{tv}{rates['decode_floor']:>14.1f}"
                     f"{row['ratio_ours_to_decode_floor']:>13.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="training images per dataset (one pass reads all)")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per pipeline (after a warm-up pass)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help=f"subset of {','.join(PIPELINES)}")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the generated datasets live (default: <sample cache>/bench_data)")
    parser.add_argument("--quick", action="store_true", help="4 images, one round: a smoke test")
    parser.add_argument("--note", default=None, help="free text stored with the machine description")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    pipelines = [p for p in args.pipelines.split(",") if p]
    unknown = sorted(set(pipelines) - set(PIPELINES))
    if unknown or not pipelines:
        parser.error(f"unknown pipeline(s) {unknown or pipelines}; available: {', '.join(PIPELINES)}")
    if args.quick:
        args.images, args.rounds = 4, 1
    if args.images < ADE20K_BATCH or args.rounds < 1:
        parser.error(f"--images must be >= {ADE20K_BATCH} and --rounds >= 1")
    torch.set_num_threads(1)  # as in a DataLoader worker
    from carafe_exp.allocator import configure_cpu_allocator

    allocator = configure_cpu_allocator()  # as the carafe-exp process does
    machine = describe_machine(torch.device("cpu")) | {"cpu_allocator": vars(allocator)}
    if args.note:
        machine["note"] = args.note
    data_dir = args.data_dir or default_cache_dir() / "bench_data"
    roots = generate(data_dir, args.images)

    results = {}
    for name in pipelines:
        if name in ("coco", "coco_masks"):
            passes = coco_pipelines(roots["coco"], with_masks=name == "coco_masks")
        elif name == "ade20k":
            passes = ade20k_pipelines(roots["ade20k"])
        else:
            passes = places_pipelines(roots["places"])
        images = passes.pop("images")
        results[name] = summarize(interleave(passes, args.rounds, name), images)

    report = {
        "benchmark": "data pipelines: training images per second per worker (one process, one torch thread)",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        "settings": {"images": args.images, "rounds": args.rounds, "coco_sides": COCO_SIDES,
                     "ade20k_sides": ADE20K_SIDES, "ade20k_batch": ADE20K_BATCH, "places_size": PLACES_SIZE,
                     "target_max_ratio": TARGET_MAX_RATIO},
        "methods": {
            "timing": "time.perf_counter around one pass over the dataset (every image once, seeded), one "
                      "warm-up pass each, then the pipelines interleaved, the order reversed every round; "
                      "images/s from the median pass",
            "ratio": "ours / peer in time (> 1: ours is slower)",
            "decode_floor": "PIL open + decode into a numpy array of the same files (image and label for ADE20K)",
        },
        "results": results,
    }
    out = args.out
    if out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
        out = REPO / "benchmarks" / "results" / f"data_cpu{'_quick' if args.quick else ''}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(results))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writer of a small COCO-format detection dataset: textured images with shapes of several classes.

The output has COCO 2017's layout and annotation format, so the real reader
(:mod:`carafe_exp.data.coco`) and COCOeval read it unchanged::

    directory/train2017/000000000001.jpg ...   directory/val2017/...
    directory/annotations/instances_train2017.json   .../instances_val2017.json
    directory/test2017/...   directory/annotations/image_info_test-dev2017.json   (with num_test > 0)

What it covers: four classes with non-contiguous category ids (the label mapping must be
right), objects in COCO's small (< 32²), medium and large (> 96²) area ranges, polygon
segmentations (rectangle, triangle, ellipse as a 24-gon), compressed-RLE segmentations (rings,
which have a hole a polygon cannot express), crowd regions (``iscrowd=1`` with an uncompressed
RLE, as COCO stores them), and areas and boxes computed from the masks as COCO does.
Objects do not overlap, so each drawn mask is exactly its annotation.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# Non-contiguous ids, as in COCO, so a wrong label <-> id mapping shows up in evaluation.
CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "ellipse", "supercategory": "shape"},
    {"id": 5, "name": "triangle", "supercategory": "shape"},
    {"id": 9, "name": "ring", "supercategory": "shape"},
)
# Object areas (pixels) inside COCO's small (< 32²), medium and large (> 96²) ranges, with margins
# so that rounding never moves an object across a boundary.
_AREA_RANGES = {"small": (120.0, 850.0), "medium": (1300.0, 8000.0), "large": (9700.0, 40_000.0)}
# Area of each shape relative to its bounding box (the ring's hole takes 0.44² of the ellipse).
_FILL = {"rectangle": 1.0, "ellipse": math.pi / 4, "triangle": 0.5, "ring": math.pi / 4 * (1 - 0.44 ** 2),
         "crowd": 1.0}


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (column-major runs, starting with a run of zeros), used for crowds."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random gradient with mild noise, so the detector cannot key on a flat colour."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 200, size=3)
    slope = rng.uniform(-0.3, 0.3, size=(3, 2))
    image = base[None, None, :] + yy[..., None] * slope[:, 0] + xx[..., None] * slope[:, 1]
    image += rng.normal(0, 8, size=(height, width, 3))
    return np.clip(image, 0, 255)


def _shape_polygon(kind: str, x0: float, y0: float, w: float, h: float, rng: np.random.Generator) -> list[float]:
    if kind == "rectangle":
        points = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    elif kind == "triangle":
        apex = x0 + rng.uniform(0.2, 0.8) * w
        points = [(apex, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    else:  # ellipse as a 24-gon so that the polygon annotation is the drawn shape
        cx, cy = x0 + w / 2, y0 + h / 2
        points = [(cx + w / 2 * math.cos(2 * math.pi * i / 24), cy + h / 2 * math.sin(2 * math.pi * i / 24))
                  for i in range(24)]
    return [round(float(v), 2) for point in points for v in point]


def _draw_polygon_mask(polygon: list[float], height: int, width: int) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
    return mask_utils.decode(rle)


def _ring_mask(x0: int, y0: int, w: int, h: int, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse([x0, y0, x0 + w - 1, y0 + h - 1], fill=1)
    tx, ty = max(int(w * 0.28), 2), max(int(h * 0.28), 2)
    draw.ellipse([x0 + tx, y0 + ty, x0 + w - 1 - tx, y0 + h - 1 - ty], fill=0)
    return np.asarray(canvas, dtype=np.uint8)


def _crowd_mask(x0: int, y0: int, w: int, h: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(5, 9))):
        s = int(rng.integers(4, 8))
        cx, cy = int(rng.integers(x0, x0 + max(w - s, 1))), int(rng.integers(y0, y0 + max(h - s, 1)))
        draw.rectangle([cx, cy, cx + s - 1, cy + s - 1], fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]], gap: int = 3) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < bx1 + gap and bx0 < x1 + gap and y0 < by1 + gap and by0 < y1 + gap for bx0, by0, bx1, by1 in boxes)


def _make_image(rng: np.random.Generator, image_id: int, height: int, width: int, max_objects: int,
                crowd_prob: float, next_ann_id: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    pixels = _background(rng, height, width)
    anns: list[dict[str, Any]] = []
    placed: list[tuple[int, int, int, int]] = []
    # Decide every object's class and size first and place the big ones first, so that medium and
    # large objects find room (placing in random order leaves mostly small ones).
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        requests.append((category["name"], str(rng.choice(list(_AREA_RANGES))), category))
    order = {"large": 0, "medium": 1, "small": 2}
    requests.sort(key=lambda request: order[request[1]])
    if rng.random() < crowd_prob:
        requests.append(("crowd", "medium", CATEGORIES[0]))
    for request, bucket, category in requests:
        kind = request
        for _attempt in range(20):
            fill = _FILL[kind]
            limit = min(height, width) - 4
            lo, hi = _AREA_RANGES[bucket]
            hi = min(hi, fill * limit * limit)
            if hi < lo:  # this shape cannot be large in this image; make it a rectangle
                kind, fill, category = "rectangle", 1.0, CATEGORIES[0]
                hi = min(_AREA_RANGES[bucket][1], limit * limit)
            side = math.sqrt(float(rng.uniform(lo, hi)) / fill)
            aspect = float(rng.uniform(0.8, 1.25)) if bucket != "large" else 1.0
            w = int(round(min(side * math.sqrt(aspect), limit)))
            h = int(round(min(side / math.sqrt(aspect), limit)))
            x0, y0 = int(rng.integers(1, width - w)), int(rng.integers(1, height - h))
            box = (x0, y0, x0 + w, y0 + h)
            if not _overlaps(box, placed):
                break
        else:
            continue
        placed.append(box)
        colour = rng.uniform(0, 255, size=3)
        if request == "crowd":
            mask = _crowd_mask(x0, y0, w, h, height, width, rng)
            segmentation: Any = _uncompressed_rle(mask)
            iscrowd = 1
        else:
            iscrowd = 0
            if kind == "ring":
                mask = _ring_mask(x0, y0, w, h, height, width)
                segmentation = _compressed_rle(mask)
            else:
                polygon = _shape_polygon(kind, x0, y0, w, h, rng)
                mask = _draw_polygon_mask(polygon, height, width)
                segmentation = [polygon]
        if not mask.any():
            placed.pop()
            continue
        pixels[mask.astype(bool)] = colour
        rle = mask_utils.encode(np.asfortranarray(mask))
        anns.append({
            "id": next_ann_id + len(anns),
            "image_id": image_id,
            "category_id": category["id"],
            "segmentation": segmentation,
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": iscrowd,
        })
    return np.clip(pixels, 0, 255).astype(np.uint8), anns


def write_coco_sample(directory: str | os.PathLike[str], num_train: int = 64, num_val: int = 16,
                      min_side: int = 128, max_side: int = 192, max_objects: int = 4, crowd_prob: float = 0.2,
                      seed: int = 0, num_test: int = 0) -> None:
    """Write the sample (train2017, val2017 and their instances files) into ``directory``.

    Image sides are drawn from [min_side, max_side]; each image gets 1..max_objects shapes and,
    with probability ``crowd_prob``, one crowd region. ``num_test`` > 0 also writes a test-dev
    split as COCO publishes it: images in ``test2017/`` and ``image_info_test-dev2017.json``
    (images and categories, no annotations).
    """
    if min_side < 112 or max_side < min_side:
        raise ValueError(f"coco sample: need 112 <= min_side <= max_side (large objects are > 96 px), "
                         f"got min_side={min_side} max_side={max_side}")
    if num_train < 1 or num_val < 1 or num_test < 0:
        raise ValueError(f"coco sample: num_train and num_val must be >= 1 and num_test >= 0, got {num_train}, "
                         f"{num_val}, {num_test}")
    directory = Path(directory)
    (directory / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image_id, ann_id = 1, 1
    for split, count in (("train2017", num_train), ("val2017", num_val)):
        (directory / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            pixels, anns = _make_image(rng, image_id, height, width, max_objects, crowd_prob, ann_id)
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(directory / split / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width,
                           "license": 0})
            annotations.extend(anns)
            ann_id += len(anns)
            image_id += 1
        payload = {
            "info": {"description": "carafe-exp generated COCO-format sample", "version": "1.0"},
            "licenses": [{"id": 0, "name": "generated", "url": ""}],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in CATEGORIES],
        }
        (directory / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))
    if num_test:
        # After train/val, so adding a test split leaves their images and annotations unchanged.
        (directory / "test2017").mkdir(parents=True, exist_ok=True)
        images = []
        for _ in range(num_test):
            height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            pixels, _anns = _make_image(rng, image_id, height, width, max_objects, crowd_prob, ann_id)
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(directory / "test2017" / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width,
                           "license": 0})
            image_id += 1
        payload = {
            "info": {"description": "carafe-exp generated COCO-format sample (test-dev: no annotations)",
                     "version": "1.0"},
            "licenses": [{"id": 0, "name": "generated", "url": ""}],
            "images": images,
            "categories": [dict(c) for c in CATEGORIES],
        }
        (directory / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(payload))


__all__ = ["CATEGORIES", "write_coco_sample"]

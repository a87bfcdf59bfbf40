"""Writer of a small ADE20K-format dataset: procedurally drawn outdoor and indoor scenes with label PNGs.

The output has ADEChallengeData2016's layout and label encoding, so the real reader
(:mod:`carafe_exp.data.ade20k`) reads it unchanged::

    directory/images/training/ADE_train_00000001.jpg ...    directory/annotations/training/ADE_train_00000001.png
    directory/images/validation/ADE_val_00000001.jpg ...    directory/annotations/validation/...

What it covers: eleven of the 150 classes (kept at their real ADE20K label values, so class
names and the 150-way head are the real ones), each with its own colour and texture so a
network can learn them in a few minutes; "other" clutter labelled 0 (ignored); portrait and
landscape images of odd sizes; and one greyscale JPEG in the training split (ADE20K has a few).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# ADE20K label values (1-based, as stored in the PNGs) of the classes drawn.
WALL, BUILDING, SKY, FLOOR, TREE, CEILING, ROAD, GRASS, PERSON, TABLE, CAR = 1, 2, 3, 4, 5, 6, 7, 10, 13, 16, 21
SAMPLE_CLASSES = (WALL, BUILDING, SKY, FLOOR, TREE, CEILING, ROAD, GRASS, PERSON, TABLE, CAR)
UNLABELLED = 0

# Base colour (RGB) and texture of each class.
_COLOURS = {
    SKY: (135, 190, 235), BUILDING: (128, 128, 132), TREE: (40, 120, 45), ROAD: (60, 60, 64),
    GRASS: (90, 170, 60), CAR: (200, 30, 40), PERSON: (190, 140, 110), CEILING: (235, 232, 220),
    WALL: (210, 190, 150), FLOOR: (140, 95, 55), TABLE: (80, 45, 25),
}

Canvas = tuple[np.ndarray, np.ndarray]  # (H, W, 3) float image, (H, W) uint8 label


def _texture(rng: np.random.Generator, cls: int, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(_COLOURS[cls], dtype=np.float32) + rng.uniform(-12, 12, size=3)
    image = np.broadcast_to(base, (height, width, 3)).copy()
    if cls == SKY:  # brighter towards the horizon
        image += (yy / max(height, 1))[..., None] * 40
    elif cls == BUILDING:  # a grid of dark windows
        period = int(rng.integers(6, 10))
        windows = ((yy.astype(int) % period) < period // 2) & ((xx.astype(int) % period) < period // 2)
        image[windows] *= 0.55
    elif cls in (TREE, GRASS):
        image += rng.normal(0, 18, size=(height, width, 1))
    elif cls == FLOOR:  # planks
        image += np.sin(yy * 0.9)[..., None] * 14
    elif cls == WALL:
        image += rng.normal(0, 5, size=(height, width, 1))
    elif cls == ROAD:  # a dashed centre line is drawn by the scene; here only grain
        image += rng.normal(0, 7, size=(height, width, 1))
    return image


def _fill(canvas: Canvas, mask: np.ndarray, cls: int, rng: np.random.Generator) -> None:
    image, label = canvas
    if not mask.any():
        return
    image[mask] = _texture(rng, cls, *mask.shape)[mask]
    label[mask] = cls


def _shape_mask(height: int, width: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas, dtype=bool)


def _clutter(canvas: Canvas, rng: np.random.Generator) -> None:
    """Unlabelled "other" blobs (label 0), as ADE20K leaves some stuff unannotated."""
    image, label = canvas
    height, width = label.shape
    for _ in range(int(rng.integers(1, 3))):
        r = int(rng.integers(3, max(4, min(height, width) // 10)))
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        mask = _shape_mask(height, width, lambda d: d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1))
        image[mask] = rng.uniform(0, 255, size=3)
        label[mask] = UNLABELLED


def _outdoor(canvas: Canvas, rng: np.random.Generator) -> None:
    _, label = canvas
    height, width = label.shape
    yy, xx = np.mgrid[0:height, 0:width]
    horizon = int(height * rng.uniform(0.3, 0.5))
    ground = int(height * rng.uniform(0.62, 0.75))
    _fill(canvas, yy < horizon + 4 * np.sin(xx / max(width, 1) * 6.0 + rng.uniform(0, 6)), SKY, rng)
    _fill(canvas, (yy >= horizon) & (yy < ground), GRASS, rng)
    x = 0
    while x < width:  # buildings and trees along the skyline
        w = int(rng.integers(max(width // 8, 6), max(width // 4, 8)))
        top = int(rng.integers(max(horizon - height // 4, 2), horizon + 2))
        if rng.random() < 0.6:
            _fill(canvas, (yy >= top) & (yy < ground) & (xx >= x) & (xx < x + w), BUILDING, rng)
        else:
            box = [x, top, x + w, ground + 2]
            _fill(canvas, _shape_mask(height, width, lambda d, b=box: d.ellipse(b, fill=1)), TREE, rng)
        x += w + int(rng.integers(0, max(width // 10, 2)))
    _fill(canvas, yy >= ground, ROAD, rng)
    for _ in range(int(rng.integers(1, 3))):  # cars on the road
        w = int(width * rng.uniform(0.18, 0.3))
        h = max(int(w * rng.uniform(0.4, 0.55)), 4)
        x0 = int(rng.integers(0, max(width - w, 1)))
        y0 = int(rng.integers(ground - h // 2, max(height - h, ground - h // 2 + 1)))
        box = [x0, y0, x0 + w, y0 + h]
        _fill(canvas, _shape_mask(height, width, lambda d, b=box: d.rounded_rectangle(b, radius=h // 4, fill=1)),
              CAR, rng)
    if rng.random() < 0.7:  # a person
        h = int(height * rng.uniform(0.25, 0.4))
        w = max(h // 3, 3)
        x0 = int(rng.integers(0, max(width - w, 1)))
        y0 = int(np.clip(ground - h * 0.7, 0, height - h))
        box = [x0, y0, x0 + w, y0 + h]
        _fill(canvas, _shape_mask(height, width, lambda d, b=box: d.ellipse(b, fill=1)), PERSON, rng)


def _indoor(canvas: Canvas, rng: np.random.Generator) -> None:
    _, label = canvas
    height, width = label.shape
    yy, xx = np.mgrid[0:height, 0:width]
    ceiling = int(height * rng.uniform(0.12, 0.25))
    floor = int(height * rng.uniform(0.6, 0.72))
    _fill(canvas, yy < ceiling, CEILING, rng)
    _fill(canvas, (yy >= ceiling) & (yy < floor), WALL, rng)
    _fill(canvas, yy >= floor, FLOOR, rng)
    w = int(width * rng.uniform(0.3, 0.5))
    h = max(int(height * rng.uniform(0.15, 0.25)), 4)
    x0 = int(rng.integers(0, max(width - w, 1)))
    y0 = int(np.clip(floor - h // 2, 0, height - h))
    _fill(canvas, (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w), TABLE, rng)
    if rng.random() < 0.6:
        h = int(height * rng.uniform(0.35, 0.5))
        w = max(h // 3, 3)
        x1 = int(rng.integers(0, max(width - w, 1)))
        y1 = int(np.clip(floor - h * 0.75, 0, height - h))
        box = [x1, y1, x1 + w, y1 + h]
        _fill(canvas, _shape_mask(height, width, lambda d, b=box: d.ellipse(b, fill=1)), PERSON, rng)


def draw_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: a uint8 (H, W, 3) RGB image and its uint8 (H, W) ADE20K label map (0 = unlabelled)."""
    canvas: Canvas = (np.zeros((height, width, 3), dtype=np.float32), np.zeros((height, width), dtype=np.uint8))
    (_outdoor if rng.random() < 0.6 else _indoor)(canvas, rng)
    _clutter(canvas, rng)
    image = canvas[0] + rng.normal(0, 3, size=canvas[0].shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), canvas[1]


def write_ade20k_sample(directory: str | os.PathLike[str], num_train: int = 32, num_val: int = 12,
                        min_side: int = 72, max_side: int = 120, seed: int = 0) -> None:
    """Write the sample (images and annotations of ``training`` and ``validation``) into ``directory``.

    Image sides are drawn independently from [min_side, max_side], so both orientations and odd
    sizes occur; the first training image is stored as a greyscale JPEG.
    """
    if min_side < 32 or max_side < min_side:
        raise ValueError(f"ade20k sample: need 32 <= min_side <= max_side, got min_side={min_side} "
                         f"max_side={max_side}")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"ade20k sample: num_train and num_val must be >= 1, got {num_train}, {num_val}")
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    for split, prefix, count in (("training", "ADE_train", num_train), ("validation", "ADE_val", num_val)):
        image_dir, label_dir = directory / "images" / split, directory / "annotations" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            image, label = draw_scene(rng, height, width)
            picture = Image.fromarray(image)
            if split == "training" and index == 1:
                picture = picture.convert("L")
            picture.save(image_dir / f"{prefix}_{index:08d}.jpg", quality=92)
            Image.fromarray(label, mode="L").save(label_dir / f"{prefix}_{index:08d}.png")


__all__ = ["SAMPLE_CLASSES", "UNLABELLED", "draw_scene", "write_ade20k_sample"]

"""Writer of the ``places_sample`` dataset: procedurally drawn scenes in the Places365 layout.

The layout is Places365-Standard's (``zhoubolei/places_devkit``), so the real reader
(:mod:`carafe_exp.data.places`) reads it unchanged::

    directory/places365_train_standard.txt     lines like "/b/beach/00000001.jpg 0"
    directory/data_256/b/beach/00000001.jpg ...
    directory/places365_val.txt                 lines like "Places365_val_00000001.jpg 0"
    directory/val_256/Places365_val_00000001.jpg ...
    directory/categories_places365.txt          lines like "/b/beach 0"

Each 256×256 JPEG is a scene: a sky gradient over a ground gradient at a random horizon, a
ground texture (stripes, checks or smooth noise), and a few flat or shaded shapes. There is
structure for a completion network to continue into a hole (edges, gradients, repeating
texture) and no two images are alike.
"""

from __future__ import annotations

import colorsys
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# A few Places365 category names (with their real index in categories_places365.txt).
CATEGORIES: tuple[tuple[str, int], ...] = (
    ("/b/beach", 48), ("/d/desert/sand", 117), ("/f/field/wild", 151), ("/m/mountain", 232),
    ("/s/sky", 293), ("/c/corridor", 101),
)
SIZE = 256


def _colour(rng: np.random.Generator, hue: float | None = None, value: tuple[float, float] = (0.3, 0.95)) -> np.ndarray:
    hue = rng.uniform(0.0, 1.0) if hue is None else hue % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.2, 0.9), rng.uniform(*value)), dtype=np.float32)


def _gradient(rng: np.random.Generator, height: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    t = np.linspace(0.0, 1.0, max(height, 1), dtype=np.float32)[:, None, None] ** rng.uniform(0.6, 1.6)
    return top[None, None, :] * (1 - t) + bottom[None, None, :] * t


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:  # stripes
        angle, period = rng.uniform(0, math.pi), rng.uniform(8, 32)
        return np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    if kind == 1:  # checks
        cell = rng.uniform(10, 28)
        return np.where((np.floor(xx / cell) + np.floor(yy / cell)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    # smooth noise: a coarse random grid upsampled bilinearly
    coarse = rng.uniform(-1, 1, (5, 5)).astype(np.float32)
    image = Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize((width, max(height, 1)), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 127.5 - 1.0


def draw_scene(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One scene as a (size, size, 3) uint8 array."""
    horizon = int(rng.uniform(0.3, 0.7) * size)
    sky = _gradient(rng, horizon, _colour(rng, rng.uniform(0.5, 0.7), (0.6, 1.0)), _colour(rng, value=(0.7, 1.0)))
    ground_hue = rng.uniform(0.0, 0.4)
    ground = _gradient(rng, size - horizon, _colour(rng, ground_hue), _colour(rng, ground_hue + 0.05, (0.2, 0.6)))
    ground = ground + 0.12 * _texture(rng, size - horizon, size)[..., None]
    pixels = np.concatenate([np.broadcast_to(sky, (horizon, size, 3)), ground], axis=0)
    canvas = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c * 255) for c in _colour(rng))
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(size * 0.05, size * 0.22, 2)
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle(box, fill=colour)
        elif shape == 1:
            draw.ellipse(box, fill=colour)
        else:
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))))
            draw.polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles], fill=colour)
    pixels = np.asarray(canvas, dtype=np.float32) / 255.0
    pixels = pixels + rng.normal(0.0, 0.015, pixels.shape).astype(np.float32)  # sensor noise, so no flat area is exact
    return (np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def write_places_sample(directory: str | os.PathLike[str], num_train: int = 64, num_val: int = 16,
                        seed: int = 0) -> None:
    """Write ``num_train`` training and ``num_val`` validation scenes into ``directory`` (layout above)."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f"places sample: num_train and num_val must be >= 1, got {num_train}, {num_val}")
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    train_lines = []
    for i in range(num_train):
        category, label = CATEGORIES[i % len(CATEGORIES)]
        relative = f"{category}/{i // len(CATEGORIES) + 1:08d}.jpg"
        path = directory / "data_256" / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_scene(rng)).save(path, quality=95)
        train_lines.append(f"{relative} {label}\n")
    (directory / "places365_train_standard.txt").write_text("".join(train_lines))
    val_lines = []
    (directory / "val_256").mkdir(parents=True, exist_ok=True)
    for i in range(num_val):
        name = f"Places365_val_{i + 1:08d}.jpg"
        Image.fromarray(draw_scene(rng)).save(directory / "val_256" / name, quality=95)
        val_lines.append(f"{name} {CATEGORIES[i % len(CATEGORIES)][1]}\n")
    (directory / "places365_val.txt").write_text("".join(val_lines))
    (directory / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for c, i in CATEGORIES))

"""Writer of the ``imagenet_sample`` dataset: a small ImageFolder of procedurally distinct textures.

Each class is an oriented sinusoidal grating with its own orientation, frequency and colour,
drawn with a random phase, jitter and noise, so that a ResNet can learn the classes in a few
epochs while no two images are the same. Files are JPEGs in the real ImageNet layout
(``train/<wnid>/<wnid>_<i>.JPEG``, ``val/<wnid>/...``) and are read by the real reader.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image


def class_wnid(index: int) -> str:
    """A WordNet-id-shaped folder name for class ``index`` (``n90000000``, ...)."""
    return f"n9{index:07d}"


def _texture(rng: np.random.Generator, class_index: int, num_classes: int, size: int) -> np.ndarray:
    angle = math.pi * class_index / num_classes + rng.normal(0.0, 0.05)
    frequency = (2.0 + 1.5 * (class_index % 3)) * 2 * math.pi / size * (1.0 + rng.normal(0.0, 0.05))
    hue = (class_index / num_classes + rng.normal(0.0, 0.02)) % 1.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = np.sin(frequency * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    base = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9), dtype=np.float32)
    image = 0.5 + 0.35 * wave[..., None] * base[None, None, :] + rng.normal(0.0, 0.06, (size, size, 3))
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def write_imagefolder_sample(root: str | Path, num_classes: int = 10, train_per_class: int = 24,
                             val_per_class: int = 8, size: int = 80, seed: int = 0) -> None:
    """Write the sample into ``root`` (``train/`` and ``val/`` ImageFolder trees of JPEGs)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for class_index in range(num_classes):
            folder = root / split / class_wnid(class_index)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = _texture(rng, class_index, num_classes, size)
                Image.fromarray(pixels).save(folder / f"{class_wnid(class_index)}_{i:05d}.JPEG", quality=92)

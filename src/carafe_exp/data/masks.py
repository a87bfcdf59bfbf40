"""Free-form hole masks for inpainting, as DeepFill v2 generates them, and the fixed validation masks.

The CARAFE papers train and test on "free-form masks" of Yu et al. (DeepFill v2, ICCV 2019).
:func:`brush_stroke_mask` follows DeepFill v2's ``brush_stroke_mask`` (JiahuiYu/
generative_inpainting, ``inpaint_ops.py``; ported in mmagic ``mask.py``):

- 1 to ``max_strokes`` (3) strokes, each of ``min_vertices``..``max_vertices``-1 (4..11) vertices;
- per stroke, turning angles ~ U(2π/5 − u₁, 2π/5 + u₂), u ~ U(0, 2π/15), every other angle
  reflected (2π − a);
- step length ~ N(r, ⌊r/2⌋) clipped to [0, 2r], r = √(H² + W²)/8;
- stroke width ~ U[12, 40) pixels, a line through the vertices plus a disc at each vertex.

The official code's random flips discard their result (no-ops), so there are none here. Widths are
given for 256×256 images, the size DeepFill v2 and the papers train at, and scale with the shorter
side for other sizes (``width_reference``), so a 64×64 sample gets masks of the same shape.
DeepFill v2's PyTorch ports also OR in a random box (:func:`random_box_mask`); the papers do not
say, so it is off unless ``ff_plus_bbox`` is set.

Masks are bool arrays (H, W) with True in the hole (the papers' M = 1). Validation uses one fixed
mask per image, drawn from ``(seed, image index)`` so it does not depend on the order or number of
images read, written once as PNGs (:func:`ensure_validation_masks`) so every run and every model
is scored on the same holes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from carafe_exp.data.sample_cache import ensure_sample
from carafe_exp.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreeFormMaskSettings:
    """DeepFill v2's brush-stroke parameters (defaults: the official code) and the optional box."""

    max_strokes: int = 3
    min_vertices: int = 4
    max_vertices: int = 12          # exclusive, as np.random.randint(4, 12) in the official code
    mean_angle: float = 2 * math.pi / 5
    angle_range: float = 2 * math.pi / 15
    min_width: float = 12.0         # pixels at width_reference
    max_width: float = 40.0         # exclusive upper bound, pixels at width_reference
    width_reference: int = 256
    ff_plus_bbox: bool = False
    bbox_size: float = 0.5          # box side as a fraction of the image side (128 of 256)
    bbox_max_delta: float = 0.125   # the box shrinks by up to this fraction per side pair (32 of 256)

    def __post_init__(self) -> None:
        # One canonical type per field, so a setting from YAML (12) and from code (12.0) name the
        # same validation-mask directory.
        for field in fields(self):
            cast = {"int": int, "float": float, "bool": bool}[str(field.type)]
            value = getattr(self, field.name)
            if not isinstance(value, (int, float, bool)):
                raise ConfigError(f"data.masks.{field.name} must be a number, got {value!r}")
            object.__setattr__(self, field.name, cast(value))
        if not 1 <= self.max_strokes:
            raise ConfigError(f"data.masks.max_strokes must be >= 1, got {self.max_strokes}")
        if not 2 <= self.min_vertices < self.max_vertices:
            raise ConfigError(f"data.masks: need 2 <= min_vertices < max_vertices, got {self.min_vertices}, "
                              f"{self.max_vertices}")
        if not 0 < self.min_width < self.max_width:
            raise ConfigError(f"data.masks: need 0 < min_width < max_width, got {self.min_width}, {self.max_width}")
        if not 0 < self.bbox_size <= 1 or not 0 <= self.bbox_max_delta < self.bbox_size:
            raise ConfigError(f"data.masks: need 0 < bbox_size <= 1 and 0 <= bbox_max_delta < bbox_size, got "
                              f"{self.bbox_size}, {self.bbox_max_delta}")


def brush_stroke_mask(height: int, width: int, rng: np.random.Generator,
                      settings: FreeFormMaskSettings = FreeFormMaskSettings()) -> np.ndarray:
    """One DeepFill v2 free-form mask (H, W), True in the hole."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    average_radius = math.sqrt(height * height + width * width) / 8
    width_scale = min(height, width) / settings.width_reference
    for _ in range(int(rng.integers(1, settings.max_strokes + 1))):
        num_vertices = int(rng.integers(settings.min_vertices, settings.max_vertices))
        angle_min = settings.mean_angle - rng.uniform(0, settings.angle_range)
        angle_max = settings.mean_angle + rng.uniform(0, settings.angle_range)
        angles = [2 * math.pi - rng.uniform(angle_min, angle_max) if i % 2 == 0 else rng.uniform(angle_min, angle_max)
                  for i in range(num_vertices)]
        vertices = [(int(rng.integers(0, width)), int(rng.integers(0, height)))]
        for angle in angles:
            step = float(np.clip(rng.normal(average_radius, average_radius // 2), 0, 2 * average_radius))
            x = float(np.clip(vertices[-1][0] + step * math.cos(angle), 0, width))
            y = float(np.clip(vertices[-1][1] + step * math.sin(angle), 0, height))
            vertices.append((int(x), int(y)))
        stroke = max(1, int(rng.uniform(settings.min_width, settings.max_width) * width_scale))
        draw.line(vertices, fill=1, width=stroke)
        for vx, vy in vertices:
            draw.ellipse((vx - stroke // 2, vy - stroke // 2, vx + stroke // 2, vy + stroke // 2), fill=1)
    return np.asarray(canvas, dtype=np.uint8) > 0


def random_box_mask(height: int, width: int, rng: np.random.Generator,
                    settings: FreeFormMaskSettings = FreeFormMaskSettings()) -> np.ndarray:
    """DeepFill's ``random_bbox`` + ``bbox2mask``: a box at a random place, shrunk by a random delta."""
    box_h, box_w = max(1, round(settings.bbox_size * height)), max(1, round(settings.bbox_size * width))
    top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    delta_h = int(rng.integers(0, round(settings.bbox_max_delta * height) // 2 + 1))
    delta_w = int(rng.integers(0, round(settings.bbox_max_delta * width) // 2 + 1))
    mask = np.zeros((height, width), dtype=bool)
    mask[top + delta_h: top + box_h - delta_h, left + delta_w: left + box_w - delta_w] = True
    return mask


def free_form_mask(height: int, width: int, rng: np.random.Generator,
                   settings: FreeFormMaskSettings = FreeFormMaskSettings()) -> np.ndarray:
    """A training mask: brush strokes, OR-ed with a random box when ``settings.ff_plus_bbox``."""
    mask = brush_stroke_mask(height, width, rng, settings)
    if settings.ff_plus_bbox:
        mask |= random_box_mask(height, width, rng, settings)
    return mask


def validation_mask(index: int, height: int, width: int, seed: int,
                    settings: FreeFormMaskSettings = FreeFormMaskSettings()) -> np.ndarray:
    """The fixed mask of validation image ``index``: a function of (seed, index) only."""
    return free_form_mask(height, width, np.random.default_rng([int(seed), int(index)]), settings)


def mask_file_name(index: int) -> str:
    """File name of validation mask ``index`` (PNG, 255 in the hole)."""
    return f"{index:08d}.png"


def _write_validation_masks(directory: Path, *, count: int, height: int, width: int, seed: int,
                            settings: dict[str, object]) -> None:
    parsed = FreeFormMaskSettings(**settings)  # type: ignore[arg-type]
    log.info("writing %d fixed validation masks (%dx%d, seed %d) to %s", count, height, width, seed, directory)
    for index in range(count):
        mask = validation_mask(index, height, width, seed, parsed)
        Image.fromarray(mask.astype(np.uint8) * 255).save(directory / mask_file_name(index), format="PNG")


def validation_mask_dir(cache_dir: str | os.PathLike[str], count: int, height: int, width: int, seed: int,
                        settings: FreeFormMaskSettings) -> Path:
    """Where the masks of one validation setting live: a directory named by a digest of that setting."""
    key = json.dumps({"count": count, "height": height, "width": width, "seed": seed, "settings": asdict(settings)},
                     sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(cache_dir).expanduser() / f"free_form_{height}x{width}_seed{seed}_{digest}"


def ensure_validation_masks(cache_dir: str | os.PathLike[str], count: int, height: int, width: int, seed: int,
                            settings: FreeFormMaskSettings = FreeFormMaskSettings()) -> Path:
    """Write the ``count`` fixed validation masks once (atomically) under ``cache_dir``; return their directory.

    Mask ``i`` belongs to the ``i``-th image of the validation list. Concurrent processes (DDP
    ranks, test workers) all end up reading the same complete set.
    """
    directory = validation_mask_dir(cache_dir, count, height, width, seed, settings)
    params = {"count": int(count), "height": int(height), "width": int(width), "seed": int(seed),
              "settings": asdict(settings)}
    return ensure_sample(directory, _write_validation_masks, params)


def read_mask(path: str | os.PathLike[str], size: Sequence[int] | None = None) -> np.ndarray:
    """Read a mask PNG (non-zero = hole) as a bool (H, W) array; a bad file raises DataError naming it."""
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 0
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read mask {path}: {error}") from None
    if size is not None and mask.shape != tuple(size):
        raise DataError(f"mask {path} is {mask.shape[0]}x{mask.shape[1]}, expected {size[0]}x{size[1]}")
    return mask

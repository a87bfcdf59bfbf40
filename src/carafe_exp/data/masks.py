"""Hole masks for inpainting: DeepFill v2's free-form strokes, with or without its box, or mmagic's irregular masks.

The CARAFE papers train and test on "free-form masks introduced by [13]" (Yu et al., DeepFill v2).
Three distributions are offered, ``data.masks.mode``:

- ``brush`` (default): the free-form mask [13] introduces, its Algorithm 1, as the official code's
  ``brush_stroke_mask`` draws it (JiahuiYu/generative_inpainting ``inpaint_ops.py``; ported in mmagic
  ``mask.py``). Mean hole ≈ 15 % at 256².
- ``brush_box``: what DeepFill v2's official training feeds (``inpaint_model.py``
  ``build_graph_with_losses``: ``brush_stroke_mask`` OR ``bbox2mask(random_bbox)``), the box being
  DeepFill v1's regular mask. Mean hole ≈ 31 %.
- ``irregular``: mmagic's DeepFill v2 Places config (``deepfillv2_8xb2_places-256x256.py``,
  ``LoadMask(mask_mode='irregular')`` → ``get_irregular_mask``): ``random_irregular_mask`` strokes
  redrawn until the hole covers 15–65 % of the image. Mean hole ≈ 29 %.

``brush_stroke_mask``:

- 1 to ``max_strokes`` (3) strokes, each of ``min_vertices``..``max_vertices``-1 (4..11) vertices;
- per stroke, turning angles ~ U(2π/5 − u₁, 2π/5 + u₂), u ~ U(0, 2π/15), every other angle
  reflected (2π − a);
- step length ~ N(r, ⌊r/2⌋) clipped to [0, 2r], r = √(H² + W²)/8;
- stroke width ~ U[12, 40) pixels, a line through the vertices plus a disc at each vertex.

The official code's random flips discard their result (no-ops), so there are none here. Widths and
lengths are given for 256×256 images, the size DeepFill v2, mmagic and the papers train at, and scale
with the shorter side for other sizes (``width_reference``), so a 64×64 sample gets masks of the same shape.

Masks are bool arrays (H, W) with True in the hole (the papers' M = 1). Validation uses one fixed
mask per image, drawn from ``(seed, image index)`` so it does not depend on the order or number of
images read, written once as PNGs (:func:`ensure_validation_masks`) so every run and every model
is scored on the same holes; the directory is named by the whole setting, mode included.
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


MASK_MODES = ("brush", "brush_box", "irregular")


@dataclass(frozen=True)
class FreeFormMaskSettings:
    """The mask distribution (``mode``) and its parameters (defaults: each source's code)."""

    mode: str = "brush"
    max_strokes: int = 3
    min_vertices: int = 4
    max_vertices: int = 12          # exclusive, as np.random.randint(4, 12) in the official code
    mean_angle: float = 2 * math.pi / 5
    angle_range: float = 2 * math.pi / 15
    min_width: float = 12.0         # pixels at width_reference
    max_width: float = 40.0         # exclusive upper bound, pixels at width_reference
    width_reference: int = 256
    bbox_size: float = 0.5          # box side as a fraction of the image side (128 of 256)
    bbox_max_delta: float = 0.125   # the box shrinks by up to this fraction per side pair (32 of 256)
    # mmagic deepfillv2_8xb2_places-256x256.py mask_config (pixels at width_reference)
    irregular_min_vertices: int = 4
    irregular_max_vertices: int = 10     # exclusive (np.random.randint)
    irregular_max_angle: float = 6.0     # angles are integers in [0, max_angle) radians, + 0.01
    irregular_min_length: int = 20
    irregular_max_length: int = 128      # exclusive
    irregular_min_width: int = 10
    irregular_max_width: int = 45        # exclusive
    irregular_min_area: float = 0.15     # redrawn until min_area < hole share < max_area
    irregular_max_area: float = 0.65

    def __post_init__(self) -> None:
        # One canonical type per field, so a setting from YAML (12) and from code (12.0) name the
        # same validation-mask directory.
        for field in fields(self):
            cast = {"int": int, "float": float, "bool": bool, "str": str}[str(field.type)]
            value = getattr(self, field.name)
            if cast is str:
                if value not in MASK_MODES:
                    raise ConfigError(f"data.masks.mode must be one of {list(MASK_MODES)}, got {value!r}")
                continue
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
        for low, high in (("irregular_min_vertices", "irregular_max_vertices"),
                          ("irregular_min_length", "irregular_max_length"),
                          ("irregular_min_width", "irregular_max_width")):
            if not 1 <= getattr(self, low) < getattr(self, high):
                raise ConfigError(f"data.masks: need 1 <= {low} < {high}, got {getattr(self, low)}, "
                                  f"{getattr(self, high)}")
        if not 0 <= self.irregular_min_area < self.irregular_max_area <= 1 or self.irregular_max_angle <= 0:
            raise ConfigError(f"data.masks: need 0 <= irregular_min_area < irregular_max_area <= 1 and "
                              f"irregular_max_angle > 0, got {self.irregular_min_area}, {self.irregular_max_area}, "
                              f"{self.irregular_max_angle}")


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
    """DeepFill's ``random_bbox`` + ``bbox2mask``: a box at a random place, shrunk by a random delta (``brush_box``)."""
    box_h, box_w = max(1, round(settings.bbox_size * height)), max(1, round(settings.bbox_size * width))
    top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    delta_h = int(rng.integers(0, round(settings.bbox_max_delta * height) // 2 + 1))
    delta_w = int(rng.integers(0, round(settings.bbox_max_delta * width) // 2 + 1))
    mask = np.zeros((height, width), dtype=bool)
    mask[top + delta_h: top + box_h - delta_h, left + delta_w: left + box_w - delta_w] = True
    return mask


def irregular_stroke_mask(height: int, width: int, rng: np.random.Generator,
                          settings: FreeFormMaskSettings = FreeFormMaskSettings()) -> np.ndarray:
    """mmagic's ``random_irregular_mask`` (``mmagic/utils/trans_utils.py``), one draw, True in the hole.

    4..9 start points; from each, 1..5 segments of length U[20, 128) and width U[10, 45) at an
    angle of (integer in [0, 6)) + 0.01 radians, reflected at every other start point. mmagic draws
    with ``cv2.line``, whose thick lines end in round caps: here a PIL line plus a disc at each end.
    mmagic swaps x and y between its sin/cos and cv2's point order; on the papers' square images the
    distribution is the same, so this draws in the natural order.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    scale = min(height, width) / settings.width_reference
    for start in range(int(rng.integers(settings.irregular_min_vertices, settings.irregular_max_vertices))):
        x, y = int(rng.integers(width)), int(rng.integers(height))
        segments = int(rng.integers(1, 6))
        angles = rng.integers(0, math.ceil(settings.irregular_max_angle), size=segments)
        lengths = rng.integers(settings.irregular_min_length, settings.irregular_max_length, size=segments)
        widths = rng.integers(settings.irregular_min_width, settings.irregular_max_width, size=segments)
        for angle, length, stroke in zip(angles, lengths, widths, strict=True):
            angle = 0.01 + float(angle)
            if start % 2 == 0:
                angle = 2 * math.pi - angle
            end_x = int(x + float(length) * scale * math.sin(angle))
            end_y = int(y + float(length) * scale * math.cos(angle))
            line = max(1, int(float(stroke) * scale))
            draw.line([(x, y), (end_x, end_y)], fill=1, width=line)
            for cx, cy in ((x, y), (end_x, end_y)):
                draw.ellipse((cx - line / 2, cy - line / 2, cx + line / 2, cy + line / 2), fill=1)
            x, y = end_x, end_y
    return np.asarray(canvas, dtype=np.uint8) > 0


def irregular_mask(height: int, width: int, rng: np.random.Generator,
                   settings: FreeFormMaskSettings = FreeFormMaskSettings()) -> np.ndarray:
    """mmagic's ``get_irregular_mask``: redraw until the hole share lies strictly inside the area range."""
    for _ in range(10_000):
        mask = irregular_stroke_mask(height, width, rng, settings)
        if settings.irregular_min_area < mask.mean() < settings.irregular_max_area:
            return mask
    raise ConfigError(f"data.masks: no irregular mask within irregular_min_area..irregular_max_area "
                      f"({settings.irregular_min_area}..{settings.irregular_max_area}) in 10000 draws at "
                      f"{height}x{width}; widen the range")


def free_form_mask(height: int, width: int, rng: np.random.Generator,
                   settings: FreeFormMaskSettings = FreeFormMaskSettings()) -> np.ndarray:
    """A mask of ``settings.mode``: brush strokes, brush strokes OR a random box, or an irregular mask."""
    if settings.mode == "irregular":
        return irregular_mask(height, width, rng, settings)
    mask = brush_stroke_mask(height, width, rng, settings)
    if settings.mode == "brush_box":
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

"""Pictures for people: send an image to the run's TensorBoard / W&B loggers, or write it as a PNG.

    from carafe_exp.runs.image_logging import log_image, write_png
    log_image(trainer, "val/completion", grid, step=trainer.global_step)
    write_png(grid, run_dir / "pictures" / "epoch000.png")

``image`` may be a torch tensor (C, H, W) or (H, W), a NumPy array (H, W, C) or (H, W), or a PIL
image; floating-point values are read as [0, 1] and clipped, integer ones as 0..255. C is 1, 3 or
4. Loggers other than TensorBoard and W&B (CSV) have no place for pictures and are skipped; on DDP
ranks other than 0 Lightning's loggers do nothing, so every rank may call this.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

ImageLike = torch.Tensor | np.ndarray | Image.Image


def to_uint8_hwc(image: ImageLike) -> np.ndarray:
    """The picture as a (H, W, C) uint8 array with C in {1, 3, 4}; raises ValueError for other shapes."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"))
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() != 3:
            raise ValueError(f"image tensor must be (C, H, W) or (H, W), got shape {tuple(image.shape)}")
        array = tensor.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        array = image[..., None] if image.ndim == 2 else image
        if array.ndim != 3:
            raise ValueError(f"image array must be (H, W, C) or (H, W), got shape {image.shape}")
    else:
        raise TypeError(f"image must be a torch tensor, a NumPy array or a PIL image, got {type(image).__name__}")
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must have 1, 3 or 4 channels, got shape {array.shape} (H, W, C)")
    if np.issubdtype(array.dtype, np.floating):
        array = np.round(np.clip(np.nan_to_num(array.astype(np.float64)), 0.0, 1.0) * 255.0)
    return np.clip(array, 0, 255).astype(np.uint8)


def _loggers_of(trainer_or_loggers: Any) -> list[Any]:
    if trainer_or_loggers is None:
        return []
    loggers = getattr(trainer_or_loggers, "loggers", None)  # Trainer or LightningModule
    if loggers is not None:
        return list(loggers)
    if isinstance(trainer_or_loggers, Iterable) and not isinstance(trainer_or_loggers, (str, bytes)):
        return list(trainer_or_loggers)
    return [trainer_or_loggers]


def log_image(trainer_or_loggers: Any, tag: str, image: ImageLike, step: int) -> list[str]:
    """Log ``image`` under ``tag`` at ``step`` to every TensorBoard and W&B logger given.

    ``trainer_or_loggers`` is a Lightning Trainer (or LightningModule), one logger, or a list of
    them. Returns the class names of the loggers written to (empty when none takes pictures).
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    pixels = to_uint8_hwc(image)
    written: list[str] = []
    for logger in _loggers_of(trainer_or_loggers):
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, pixels, global_step=int(step), dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[pixels[..., 0] if pixels.shape[-1] == 1 else pixels], step=int(step))
        else:
            continue
        written.append(type(logger).__name__)
    return written


def write_png(image: ImageLike, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` to ``path`` as a PNG, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8_hwc(image)
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        picture.save(staging, format="PNG")
        os.replace(staging, path)
    finally:
        if staging.exists():
            staging.unlink()
    return path

"""Joint image/target transforms for detection: to-tensor and horizontal flip.

Targets follow torchvision's detection convention: ``boxes`` (N, 4) float xyxy in pixels,
``labels`` (N,) int64 contiguous labels 1..K, ``masks`` (N, H, W) uint8, plus bookkeeping
(``image_id``, ``area``, ``iscrowd``). The resize to short side ``min_size`` / long side at
most ``max_size`` and the padding to the FPN's stride (32, or 64 with the P6 option) are done
once, inside the model's ``GeneralizedRCNNTransform``, so predictions come back in the
original image coordinates that COCO evaluation needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

Target = dict[str, Any]
Transform = Callable[[Any, Target], tuple[Any, Target]]


class Compose:
    """Apply joint transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"


class ToTensor:
    """PIL RGB image → float32 (3, H, W) tensor in [0, 1] (the R-CNN transform normalises it)."""

    def __call__(self, image: Image.Image | torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if isinstance(image, torch.Tensor):
            return image, target
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        return tensor, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomHorizontalFlip:
    """Flip the image, boxes and masks left-right with probability ``p`` (mmdetection flip_ratio=0.5)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if self.p <= 0.0 or torch.rand(()) >= self.p:
            return image, target
        return hflip(image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror a (C, H, W) image and its target; a box [x1, x2) maps to [W - x2, W - x1)."""
    width = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    if "boxes" in target and len(target["boxes"]):
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


def build_detection_transforms(train: bool, flip_prob: float = 0.5) -> Compose:
    """Training: to-tensor + random flip; evaluation: to-tensor only."""
    transforms: list[Transform] = [ToTensor()]
    if train and flip_prob > 0:
        transforms.append(RandomHorizontalFlip(flip_prob))
    return Compose(transforms)


__all__ = ["Compose", "RandomHorizontalFlip", "ToTensor", "build_detection_transforms", "hflip"]

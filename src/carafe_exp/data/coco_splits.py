"""Where a COCO split's files are, annotated or not (COCO 2017's official layout).

    root/train2017/, root/val2017/               images of the annotated splits
    root/annotations/instances_<split>.json      their instances files
    root/test2017/                               test images (test-dev is a subset of test2017)
    root/annotations/image_info_<split>.json     image lists without annotations
                                                 (image_info_test-dev2017.json, image_info_test2017.json)

A split whose name starts with ``test`` has no public annotations: it is read from its
image-info file, and its predictions go to the COCO evaluation server
(:mod:`carafe_exp.metrics.coco_results`) instead of COCOeval.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_unannotated(split: str) -> bool:
    """Whether ``split`` (``test-dev2017``, ``test2017``) has no public annotations."""
    return split.startswith("test")


def annotation_path(root: str | os.PathLike[str], split: str) -> Path:
    """``annotations/instances_<split>.json``, or ``annotations/image_info_<split>.json`` for a test split."""
    prefix = "image_info" if is_unannotated(split) else "instances"
    return Path(root) / "annotations" / f"{prefix}_{split}.json"


def image_dir(root: str | os.PathLike[str], split: str) -> Path:
    """The split's image folder: ``root/<split>``, and ``root/test2017`` for ``test-dev2017``."""
    if split.startswith("test-dev"):
        return Path(root) / f"test{split.removeprefix('test-dev')}"
    return Path(root) / split


__all__ = ["annotation_path", "image_dir", "is_unannotated"]

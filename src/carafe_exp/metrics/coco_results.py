"""COCO results files for the evaluation server (test-dev has no public annotations).

The server takes one zip per submission holding one JSON file named
``detections_<split>_<alg>_results.json``: a list of ``{"image_id", "category_id", "bbox":
[x, y, w, h], "score"}`` for box detection, with ``"segmentation"`` (compressed RLE, ``counts``
as a string) for instance segmentation. Box and mask results are separate submissions, so a
Mask R-CNN run writes two zips.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def results_name(split: str, alg: str) -> str:
    """``detections_<split>_<alg>_results`` with ``alg`` reduced to letters, digits and dashes.

    The server splits the name at underscores, so the algorithm name may not contain any.
    """
    clean = re.sub(r"[^A-Za-z0-9-]+", "-", alg).strip("-") or "carafe-exp"
    return f"detections_{split}_{clean}_results"


def results_for(results: Sequence[Mapping[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """The entries of one submission: boxes only for ``bbox``, boxes and RLE masks for ``segm``."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    out = []
    for result in results:
        entry = {"image_id": int(result["image_id"]), "category_id": int(result["category_id"]),
                 "bbox": [float(v) for v in result["bbox"]], "score": float(result["score"])}
        if iou_type == "segm":
            if "segmentation" not in result:
                raise ValueError("segm results need a 'segmentation' in every detection (a model with masks)")
            entry["segmentation"] = dict(result["segmentation"])
        out.append(entry)
    return out


def write_server_results(per_image: Mapping[int, Sequence[Mapping[str, Any]]], directory: str | os.PathLike[str],
                         split: str, alg: str, iou_types: Iterable[str] = ("bbox",)) -> list[Path]:
    """Write one zipped results JSON per IoU type into ``directory``; returns the zip paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    results = [r for image_id in sorted(per_image) for r in per_image[image_id]]
    written = []
    for iou_type in iou_types:
        name = results_name(split, f"{alg}-{iou_type}")
        payload = json.dumps(results_for(results, iou_type))
        staging = directory / f".{name}.zip.tmp"
        with zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{name}.json", payload)
        target = directory / f"{name}.zip"
        os.replace(staging, target)
        written.append(target)
    return written


__all__ = ["results_for", "results_name", "write_server_results"]

"""Smoke tests of scripts/bench_peers.py and scripts/bench_data.py (``make bench-models``) at tiny sizes.

They check that each benchmark runs end to end and writes a complete report, and that the
detection pair compares one computation: our Faster R-CNN in torchvision's configuration,
loaded with torchvision's weights, gives torchvision's losses on the first step. The scripts'
``main`` runs in this process (a subprocess would spend most of the test importing torch again);
the torch thread count they set is restored afterwards.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reference_packages import import_reference

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The benchmark scripts importable as modules (they import ``machine`` from their own directory)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    monkeypatch.setenv("CARAFE_EXP_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(script: str, args: list[str]) -> None:
    assert importlib.import_module(script).main(args) == 0


@pytest.mark.slow
def test_bench_peers_quick_reports_every_pair_and_the_same_detection_losses(scripts: None, tmp_path: Path) -> None:
    import_reference("mit_semseg")  # CSAIL's UperNet, the upernet pair's reference
    out = tmp_path / "peers.json"
    _run("bench_peers", ["--quick", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"detection", "upernet", "upernet_encoder", "upernet_decoder"}
    for row in report["results"].values():
        assert math.isfinite(row["ratio_ours_to_reference"]) and row["ratio_ours_to_reference"] > 0
        assert len(row["ours_step_s"]) == len(row["reference_step_s"]) == report["settings"]["rounds"]
    detection = report["results"]["detection"]["check"]
    assert set(detection["first_step_losses"]["ours"]) == set(detection["first_step_losses"]["reference"])
    assert detection["max_abs_loss_difference"] < 1e-4
    # CSAIL's deep stem (3x3 convs 64-64-128) has more parameters and FLOPs than torchvision's 7x7 conv.
    encoders = report["results"]["upernet_encoder"]["check"]
    assert encoders["parameters"]["ours"] < encoders["parameters"]["reference"]
    assert 0 < encoders["forward_gflops"]["ours"] < encoders["forward_gflops"]["reference"]
    decoders = report["results"]["upernet_decoder"]["check"]
    assert decoders["parameters"]["ours"] == decoders["parameters"]["reference"]  # the same decoder
    assert report["machine"]["cpu_model"] and len(report["machine"]["load_average_at_start"]) == 3


def test_bench_data_quick_reports_every_pipeline_against_its_peers(scripts: None, tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    _run("bench_data", ["--quick", "--data-dir", str(tmp_path / "datasets"), "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"coco", "coco_masks", "ade20k", "places"}
    for name, row in results.items():
        assert row["images"] >= 2, name
        assert all(rate > 0 for rate in row["images_per_s"].values()), name
        assert row["ratio_ours_to_decode_floor"] > 0, name
    assert set(results["coco"]["images_per_s"]) == {"ours", "torchvision", "decode_floor"}
    assert set(results["ade20k"]["images_per_s"]) == {"ours", "decode_floor"}

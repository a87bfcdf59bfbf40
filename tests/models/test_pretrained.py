"""Pretrained weights come from a local file or the hub cache, never from a silent download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from carafe_exp.errors import ConfigError
from carafe_exp.models.resnet import build_resnet


def test_local_checkpoint_loads_every_matching_tensor(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = build_resnet(depth=18, weights=str(path), num_classes=7)
    loaded, original = model.state_dict(), source.state_dict()
    for key, value in original.items():
        if key.startswith("fc."):
            assert loaded[key].shape != value.shape  # the 7-way head keeps its own init
        else:
            assert torch.equal(loaded[key], value), key


def test_missing_hub_weights_fail_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="not in the torch hub cache .* runs do not download"):
        build_resnet(depth=50, weights="IMAGENET1K_V1")


def test_cached_hub_weights_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), cached)
    model = build_resnet(depth=18, weights="IMAGENET1K_V1")
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_unknown_weights_name_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_resnet(depth=50, weights="IMAGENET_NOPE")


def test_unknown_depth() -> None:
    with pytest.raises(ConfigError, match="not a ResNet depth"):
        build_resnet(depth=51)

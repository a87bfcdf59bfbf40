"""Pretrained backbones: built with their downsamplers first, then loaded strictly, from a name, file, run or sweep."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from carafe_exp.errors import ConfigError
from carafe_exp.models.resnet import build_resnet

CARAFE_DOWN = {"name": "carafe", "k_down": 5, "k_encoder": 3, "c_m": 16, "normalizer": "softmax", "groups": 1,
               "compressor_norm": True}


def _trained(depth: int, downsampler: object = None, num_classes: int = 4, seed: int = 1) -> torch.nn.Module:
    """A network whose every tensor (BatchNorm statistics of the downsamplers included) differs from a fresh one."""
    torch.manual_seed(seed)
    model = build_resnet(depth=depth, num_classes=num_classes, downsampler=downsampler)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.rand_like(value))
    return model


def _assert_same(model: torch.nn.Module, source: torch.nn.Module, skip_head: bool = False) -> None:
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if skip_head and key.startswith("fc."):
            continue
        assert torch.equal(loaded[key], value), key


def _write_run(run_dir: Path, model: torch.nn.Module, depth: int, downsampler: object, site: bool = True) -> Path:
    """A run directory as `carafe-exp task=classification` leaves it: Lightning checkpoint + Hydra config."""
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 0, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               run_dir / "checkpoints" / "last.ckpt")
    (run_dir / ".hydra").mkdir()
    config = {"task": {"name": "classification"}, "model": {"backbone": {"depth": depth}, "sites": {"backbone": site}},
              "downsampler": downsampler if isinstance(downsampler, dict) else {"name": downsampler}}
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    return run_dir


def test_local_checkpoint_loads_every_tensor_but_a_head_of_another_size(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    source = _trained(18, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    with caplog.at_level(logging.INFO, logger="carafe_exp.models.pretrained"):
        model = build_resnet(depth=18, weights=str(path), num_classes=7)
    _assert_same(model, source, skip_head=True)
    assert model.fc.weight.shape == (7, 512)  # the 7-way head keeps its own init, and the log says so
    assert "classifier head fc.bias, fc.weight keeps its initialisation" in caplog.text


def test_the_downsampler_tensors_of_a_classification_checkpoint_are_kept(tmp_path: Path) -> None:
    """Issue 9 item 1: build the modified network first, then load; every resampler tensor survives."""
    source = _trained(18, CARAFE_DOWN)
    path = tmp_path / "epoch.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    model = build_resnet(depth=18, weights=str(path), num_classes=4, downsampler=CARAFE_DOWN)
    resampler_keys = [k for k in source.state_dict() if "kernel_predictor" in k]
    assert len(resampler_keys) == 7 * 8  # 7 sites x (compressor conv, BN weight/bias/mean/var/count, encoder w/b)
    _assert_same(model, source)


def test_a_detection_checkpoint_gives_its_resnet_trunk(tmp_path: Path) -> None:
    source = _trained(50, "maxpool")
    path = tmp_path / "detector.ckpt"
    state = {f"model.backbone.body.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state["model.backbone.fpn.layer_blocks.0.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, path)
    model = build_resnet(depth=50, weights=str(path), downsampler="maxpool")
    _assert_same(model, source, skip_head=True)


def test_missing_or_unexpected_tensors_are_an_error_unless_not_strict(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    plain = _trained(18)
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    with pytest.raises(ConfigError, match=r"missing from the checkpoint: layer2\.0\.resample_main.*strict=false"):
        build_resnet(depth=18, weights=str(path), num_classes=4, downsampler=CARAFE_DOWN)
    with caplog.at_level(logging.WARNING, logger="carafe_exp.models.pretrained"):
        model = build_resnet(depth=18, weights=str(path), num_classes=4, downsampler=CARAFE_DOWN, strict=False)
    assert "tensors missing from the checkpoint: layer2.0.resample_main" in caplog.text
    assert torch.equal(model.layer4[1].conv2.weight, plain.layer4[1].conv2.weight)
    # The other way round: a modified checkpoint into the plain network has tensors the model lacks.
    modified = tmp_path / "modified.pth"
    torch.save(_trained(18, "dpp").state_dict(), modified)
    with pytest.raises(ConfigError, match=r"not in the model: layer2\.0\.resample_main\.log_alpha"):
        build_resnet(depth=18, weights=str(modified), num_classes=4)


def test_missing_hub_weights_fail_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="not in the torch hub cache .* runs do not download"):
        build_resnet(depth=50, weights="IMAGENET1K_V1")


def test_cached_hub_weights_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    source = _trained(18, num_classes=1000)
    torch.save(source.state_dict(), cached)
    _assert_same(build_resnet(depth=18, weights="IMAGENET1K_V1"), source)
    # ImageNet weights into a parameter-free downsampler (max pooling) load whole, strictly.
    _assert_same(build_resnet(depth=18, weights="IMAGENET1K_V1", downsampler="maxpool"), source)


def test_a_run_directory_gives_its_last_checkpoint_if_it_has_the_same_backbone(tmp_path: Path) -> None:
    source = _trained(18, CARAFE_DOWN)
    run = _write_run(tmp_path / "run", source, 18, CARAFE_DOWN)
    _assert_same(build_resnet(depth=18, weights=str(run), num_classes=4, downsampler=CARAFE_DOWN), source)
    # Same tensors, other operator (max vs average pooling have none): the run's config tells them apart.
    pooled = _write_run(tmp_path / "maxpool_run", _trained(18, "maxpool"), 18, "maxpool")
    with pytest.raises(ConfigError, match="was trained as ResNet-18 with downsampler maxpool.*this model is "
                                          "ResNet-18 with downsampler avgpool"):
        build_resnet(depth=18, weights=str(pooled), num_classes=4, downsampler="avgpool")
    build_resnet(depth=18, weights=str(pooled), num_classes=4, downsampler="avgpool", strict=False)


def test_a_sweep_directory_gives_the_run_with_the_same_backbone(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    sources = {}
    for index, downsampler in enumerate(["conv", "maxpool", CARAFE_DOWN]):
        sources[index] = _trained(18, downsampler, seed=index)
        _write_run(sweep / f"{index}_downsampler={index}", sources[index], 18, downsampler)
    (sweep / "multirun.yaml").write_text("{}")
    _assert_same(build_resnet(depth=18, weights=str(sweep), num_classes=4, downsampler=CARAFE_DOWN), sources[2])
    _assert_same(build_resnet(depth=18, weights=str(sweep), num_classes=4, downsampler="maxpool"), sources[1])
    # The original network (no downsampler, or `conv`, or the site off) is the conv run.
    _assert_same(build_resnet(depth=18, weights=str(sweep), num_classes=4), sources[0])
    _assert_same(build_resnet(depth=18, weights=str(sweep), num_classes=4, downsampler="conv"), sources[0])
    # A parameter that differs is another backbone.
    with pytest.raises(ConfigError, match=r"no run trained as ResNet-18 with downsampler carafe\(.*c_m=32.*; its runs: "
                                          r"0_downsampler=0: ResNet-18 with its original downsampling; "):
        build_resnet(depth=18, weights=str(sweep), num_classes=4, downsampler={**CARAFE_DOWN, "c_m": 32})
    with pytest.raises(ConfigError, match="no run trained as ResNet-50"):
        build_resnet(depth=50, weights=str(sweep), downsampler="maxpool")
    _write_run(sweep / "3_again", sources[1], 18, "maxpool")
    with pytest.raises(ConfigError, match=r"several runs .* \(1_downsampler=1, 3_again\); give one run directory"):
        build_resnet(depth=18, weights=str(sweep), num_classes=4, downsampler="maxpool")


def test_a_sweep_run_described_only_by_metrics_json_is_matched(tmp_path: Path) -> None:
    source = _trained(18, "avgpool")
    run = _write_run(tmp_path / "sweep" / "0_x", source, 18, "avgpool")
    config = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"))
    (run / ".hydra" / "config.yaml").unlink()
    (run / "metrics.json").write_text(json.dumps({"status": "completed", "config": config}))
    _assert_same(build_resnet(depth=18, weights=str(tmp_path / "sweep"), num_classes=4, downsampler="avgpool"),
                 source)


def test_a_directory_without_checkpoints_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoints/last.ckpt and no run directories.*callbacks=default"):
        build_resnet(depth=18, weights=str(tmp_path))


def test_unknown_weights_name_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_resnet(depth=50, weights="IMAGENET_NOPE")


def test_unknown_depth() -> None:
    with pytest.raises(ConfigError, match="not a ResNet depth"):
        build_resnet(depth=51)

"""``model.weights``: a whole model from our own checkpoints, strictly, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from carafe_exp.errors import ConfigError
from carafe_exp.models.build import build_model
from carafe_exp.models.weight_import import load_model_weights, weight_formats

_NODE = {"_target_": "carafe_exp.models.classifier.build_resnet_classifier",
         "backbone": {"depth": 18, "weights": None}, "sites": {"backbone": False}, "weights": None}


def _build(weights: str | None = None, depth: int = 18) -> torch.nn.Module:
    node = OmegaConf.create({**_NODE, "backbone": {"depth": depth, "weights": None}, "weights": weights})
    return build_model(node, upsampler=None, downsampler="conv", num_classes=5)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_plain_state_dict_loads_the_whole_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = _build()
    file = tmp_path / "weights.pth"
    torch.save(trained.state_dict(), file)
    torch.manual_seed(1)
    assert _same(_build(str(file)), trained)


def test_a_lightning_checkpoint_loads_the_task_model_and_names_what_it_leaves(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    trained = _build()
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    state["discriminator.conv.weight"] = torch.zeros(1)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.5", "epoch": 3}, run / "checkpoints" / "last.ckpt")
    with caplog.at_level("INFO"):
        loaded = _build(str(run))
    assert _same(loaded, trained)
    assert "discriminator.*" in caplog.text and "not of the model" in caplog.text


def test_weights_of_another_model_are_one_line_naming_what_does_not_fit(tmp_path: Path) -> None:
    file = tmp_path / "r34.pth"
    torch.save(_build(depth=34).state_dict(), file)
    with pytest.raises(ConfigError) as error:
        _build(str(file))
    message = str(error.value)
    assert "\n" not in message and "model.weights=" in message and "have no place in the model" in message


def test_missing_file_and_unknown_contents_are_config_errors(tmp_path: Path) -> None:
    model = _build()
    with pytest.raises(ConfigError, match="no such file"):
        load_model_weights(model, tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable PyTorch checkpoint"):
        load_model_weights(model, junk)
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3}, other)
    with pytest.raises(ConfigError, match="not a checkpoint format carafe-exp reads"):
        load_model_weights(model, other)


def test_our_own_format_is_asked_last() -> None:
    assert weight_formats()[-1].__name__.endswith(".own")

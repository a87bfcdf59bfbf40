"""Which files ``model.weights`` takes as a CSAIL UperNet checkpoint (CSAIL ``train.py`` ``checkpoint``:
``encoder_epoch_N.pth`` and ``decoder_epoch_N.pth`` side by side), and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from carafe_exp.errors import ConfigError
from carafe_exp.models.weight_import import csail, load_model_weights


def _write(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.save({"conv1.weight": torch.zeros(1)}, directory / name)


def test_a_directory_gives_its_highest_complete_epoch(tmp_path: Path) -> None:
    _write(tmp_path, "encoder_epoch_5.pth", "decoder_epoch_5.pth", "encoder_epoch_30.pth", "decoder_epoch_30.pth",
           "encoder_epoch_40.pth")  # epoch 40 has no decoder yet
    assert csail.recognise(tmp_path)
    encoder, decoder = csail.checkpoint_pair(tmp_path)
    assert (encoder.name, decoder.name) == ("encoder_epoch_30.pth", "decoder_epoch_30.pth")
    assert csail.checkpoint_pair(tmp_path / "decoder_epoch_5.pth")[0].name == "encoder_epoch_5.pth"


def test_other_files_are_not_taken_for_csail_checkpoints(tmp_path: Path) -> None:
    _write(tmp_path, "model.pth", "encoder_epoch_3.pth")
    assert not csail.recognise(tmp_path)  # no complete pair
    assert not csail.recognise(tmp_path / "model.pth")


def test_a_model_that_is_not_upernet_is_refused_in_one_line(tmp_path: Path) -> None:
    _write(tmp_path, "encoder_epoch_1.pth", "decoder_epoch_1.pth")
    with pytest.raises(ConfigError, match="fits model=upernet"):
        load_model_weights(torch.nn.Linear(2, 2), tmp_path)

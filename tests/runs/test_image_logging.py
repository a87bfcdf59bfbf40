"""log_image reaches the real TensorBoard and (offline) W&B loggers with the exact pixels; write_png round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carafe_exp.runs.image_logging import log_image, to_uint8_hwc, write_png


def _picture() -> torch.Tensor:
    """A (3, 6, 8) float picture with distinct values per pixel and channel, values exactly on the 1/255 grid."""
    values = torch.arange(3 * 6 * 8, dtype=torch.float64).reshape(3, 6, 8) * 1.0
    return (values / 255.0).float()


def test_conversion_of_every_accepted_form() -> None:
    expected = np.arange(3 * 6 * 8).reshape(3, 6, 8).transpose(1, 2, 0).astype(np.uint8)
    assert np.array_equal(to_uint8_hwc(_picture()), expected)
    assert np.array_equal(to_uint8_hwc(expected), expected)
    assert np.array_equal(to_uint8_hwc(Image.fromarray(expected)), expected)
    # Floats outside [0, 1] are clipped, a (H, W) tensor becomes one channel.
    clipped = to_uint8_hwc(torch.tensor([[-0.5, 0.5], [1.0, 2.0]]))
    assert clipped.shape == (2, 2, 1) and clipped[..., 0].tolist() == [[0, 128], [255, 255]]
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        to_uint8_hwc(torch.zeros(2, 4, 4))
    with pytest.raises(TypeError, match="torch tensor"):
        to_uint8_hwc([[0.0]])  # type: ignore[arg-type]


def test_write_png_round_trips(tmp_path: Path) -> None:
    path = write_png(_picture(), tmp_path / "deep" / "grid.png")
    assert np.array_equal(np.asarray(Image.open(path)), to_uint8_hwc(_picture()))
    assert not list(path.parent.glob(".*.tmp"))


def test_tensorboard_logger_receives_the_image(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard = TensorBoardLogger(save_dir=str(tmp_path), name="tb", default_hp_metric=False)
    csv = CSVLogger(save_dir=str(tmp_path), name="csv")
    assert log_image([csv, tensorboard], "val/completion", _picture(), step=7) == ["TensorBoardLogger"]
    tensorboard.experiment.flush()

    events = EventAccumulator(tensorboard.log_dir, size_guidance={"images": 0})
    events.Reload()
    (logged,) = events.Images("val/completion")
    assert logged.step == 7 and (logged.width, logged.height) == (8, 6)
    import io

    decoded = np.asarray(Image.open(io.BytesIO(logged.encoded_image_string)).convert("RGB"))
    assert np.array_equal(decoded, to_uint8_hwc(_picture()))


def test_offline_wandb_logger_receives_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = WandbLogger(project="carafe-exp-test", save_dir=str(tmp_path), offline=True)
    try:
        assert log_image(logger, "val/completion", _picture(), step=3) == ["WandbLogger"]
    finally:
        wandb.finish()
    media = sorted(tmp_path.glob("wandb/offline-run-*/files/media/images/val/completion_*.png"))
    assert len(media) == 1, sorted(str(p) for p in tmp_path.rglob("*.png"))
    assert np.array_equal(np.asarray(Image.open(media[0]).convert("RGB")), to_uint8_hwc(_picture()))

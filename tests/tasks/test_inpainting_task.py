"""The inpainting task: GAN losses against hand-computed values, two optimisers, pictures, metric logging."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from carafe_exp.data.places import PlacesDataModule
from carafe_exp.errors import ConfigError
from carafe_exp.models.global_local import build_global_local
from carafe_exp.tasks.inpainting import InpaintingTask, masked_l1

# The papers' optimiser (CARAFE supplement §1): Adam lr 1e-4, betas (0.5, 0.9) at batch 32.
PAPER_ADAM = {"name": "adam", "lr": 1e-4, "base_batch_size": 32, "betas": [0.5, 0.9], "weight_decay": 0.0}
CONSTANT = {"max_epochs": 1, "policy": "constant"}


def _task(**kwargs) -> InpaintingTask:
    model = build_global_local({"name": "deconv"}, {"name": "conv"})
    kwargs.setdefault("discriminator", {"base_channels": 8})
    return InpaintingTask(model, PAPER_ADAM, CONSTANT, **kwargs)


def test_hinge_losses_by_hand() -> None:
    task = _task(recipe="deepfill_v2", discriminator={"kind": "nlayer", "base_channels": 8, "with_mask": False})
    real = torch.tensor([0.5, 2.0, -1.0]).view(1, 1, 1, 3)
    fake = torch.tensor([-2.0, 0.0, 1.5]).view(1, 1, 1, 3)
    hole = torch.ones(1, 1, 4, 4)
    # relu(1 - real) = [0.5, 0, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2.5] -> mean 7/6.
    assert task.discriminator_loss(real, fake, hole).item() == pytest.approx(5 / 6 + 7 / 6)
    assert task.generator_adversarial_loss(fake, hole).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    assert task.adversarial_weight == 0.1  # mmagic DeepFill v2's hinge weight


def test_vanilla_losses_and_hole_weighting_by_hand() -> None:
    task = _task()  # the default recipe, global_local
    assert task.adversarial_weight == 0.001  # mmagic GL's vanilla GAN weight
    fake = torch.tensor([[0.0, 2.0]]).view(1, 1, 1, 2)
    hole = torch.zeros(1, 1, 2, 4)
    hole[..., :, :1] = 1  # the left patch covers 2 of its 4 pixels, the right none
    # Only the left patch counts: -log(sigmoid(0)) = log 2.
    assert task.generator_adversarial_loss(fake, hole).item() == pytest.approx(math.log(2))
    real = torch.tensor([[1.0, -5.0]]).view(1, 1, 1, 2)
    expected = -math.log(1 / (1 + math.exp(-1.0))) + math.log(2)  # BCE(real 1 vs 1) + BCE(fake 0 vs 0)
    assert task.discriminator_loss(real, fake, hole).item() == pytest.approx(expected)


def test_default_recipe_is_mmagic_global_local_losses_with_the_papers_one_patchgan() -> None:
    """mmagic configs/_base_/models/base_gl.py: loss_gan vanilla 0.001, loss_l1_hole 1.0, no loss_l1_valid;
    CARAFE supplement §1: one PatchGAN-style discriminator on the inpainted region."""
    task = _task()
    assert task.recipe == "global_local"
    assert (task.adversarial_loss, task.adversarial_weight, task.adversarial_region) == ("vanilla", 0.001, "hole")
    assert (task.l1_hole_weight, task.l1_valid_weight) == (1.0, 0.0)
    assert task.discriminator.with_mask is False and isinstance(task.discriminator.layers[-1], torch.nn.Conv2d)
    # The generator's loss ignores the valid pixels: only the hole and the adversarial term count.
    raw, image, hole = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4)
    hole[..., :2, :] = 1
    image[..., 2:, :] = 0.8  # error only outside the hole
    losses = task.generator_losses(raw, image, hole, torch.zeros(1, 1, 1, 1))
    assert losses["l1_valid"].item() == pytest.approx(0.8)
    assert losses["total"].item() == pytest.approx(0.001 * math.log(2))


def test_deepfill_v2_recipe_is_mmagic_deepfill_v2() -> None:
    """mmagic configs/_base_/models/base_deepfillv2.py: hinge 0.1, L1 hole 1.0 and valid 1.0, SN-PatchGAN
    (MultiLayerDiscriminator, with_spectral_norm, disc_input_with_mask=True)."""
    task = _task(recipe="deepfill_v2", discriminator={"base_channels": 8})
    assert (task.adversarial_loss, task.adversarial_weight, task.adversarial_region) == ("hinge", 0.1, "all")
    assert (task.l1_hole_weight, task.l1_valid_weight) == (1.0, 1.0)
    assert task.discriminator.with_mask is True
    assert hasattr(task.discriminator.layers[0], "parametrizations")  # spectral norm


def test_a_key_set_against_its_recipe_wins_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        task = _task(adversarial_loss="hinge")
    assert task.adversarial_loss == "hinge" and task.adversarial_weight == 0.001
    assert "adversarial_loss=hinge (recipe: vanilla)" in caplog.text and "not the global_local recipe" in caplog.text
    with pytest.raises(ConfigError, match="recipe must be one of"):
        _task(recipe="pix2pix")


def test_masked_l1_by_hand() -> None:
    pred = torch.zeros(1, 3, 2, 2)
    target = torch.zeros(1, 3, 2, 2)
    target[:, :, 0, 0] = 0.6
    target[:, :, 1, 1] = 0.3
    hole = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    assert masked_l1(pred, target, hole).item() == pytest.approx(0.6)
    assert masked_l1(pred, target, 1 - hole).item() == pytest.approx(0.3 / 3)


def test_bad_choices_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="adversarial_loss must be one of"):
        _task(adversarial_loss="wgan")
    with pytest.raises(ConfigError, match="adversarial_region must be one of"):
        _task(adversarial_region="border")


def test_fit_steps_both_optimisers_logs_metrics_and_writes_pictures(tmp_path: Path) -> None:
    L.seed_everything(0)
    data = PlacesDataModule(str(tmp_path / "places"), batch_size=2, num_workers=0, image_size=32,
                            mask_dir=str(tmp_path / "masks"), sample={"num_train": 4, "num_val": 3, "seed": 0})
    task = _task(num_pictures=2)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path / "run"),
                        num_sanity_val_steps=0)
    before = [p.detach().clone() for p in (task.model.encoder[0].conv.weight, task.discriminator.layers[0].weight)]
    trainer.fit(task, datamodule=data)

    generator_opt, discriminator_opt = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
    for opt in (generator_opt, discriminator_opt):
        group = opt.param_groups[0]
        assert group["lr"] == pytest.approx(1e-4 * 2 / 32) and tuple(group["betas"]) == (0.5, 0.9)
        assert all(opt.state[p]["step"] == 2 for p in group["params"] if p in opt.state)
    assert not torch.equal(before[0], task.model.encoder[0].conv.weight)
    assert not torch.equal(before[1], task.discriminator.layers[0].weight)
    assert {"val/L1", "val/PSNR", "val/L1_whole", "val/PSNR_whole"} <= set(trainer.callback_metrics)
    assert trainer.global_step == 4  # 2 iterations × (discriminator + generator) steps

    grid = np.asarray(Image.open(tmp_path / "run" / "pictures" / "val_epoch000.png"))
    # 2 rows × 3 columns of 32 px with 2 px padding: 2 + 3·34 wide, 2 + 2·34 high.
    assert grid.shape == (2 + 2 * 34, 2 + 3 * 34, 3)

    results = trainer.test(task, datamodule=data, verbose=False)[0]
    assert {"test/L1", "test/PSNR", "test/L1_whole", "test/PSNR_whole", "test/fps"} <= set(results)
    assert 0 < results["test/L1"] < 100 and results["test/fps"] > 0
    assert (tmp_path / "run" / "pictures" / "test.png").is_file()

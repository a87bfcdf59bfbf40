"""Image inpainting (CARAFE §4.3 / Table 7, CARAFE++ §4.3 / Table X): GAN training of the completion network.

The generator (``model``: Global&Local or its Partial Conv variant) sees the image with its hole
filled and the mask, and its output is composited with the known pixels, y = (1 − M)·x + M·ŷ
(M = 1 in the hole). One PatchGAN discriminator judges the completed image (CARAFE supplement §1).
Each training step, with Lightning's manual optimisation, updates the discriminator on
(x, y.detach()) and then the generator on

    l1_hole_weight · mean_{M=1} |ŷ − x| + l1_valid_weight · mean_{M=0} |ŷ − x| + adversarial_weight · L_adv(y)

Both use Adam (the papers: lr 1e-4, betas (0.5, 0.9) at batch 32), the lr scaled linearly to the
real batch, each with the schedule's lr policy stepped once per iteration. The papers give
neither losses nor weights: ``recipe`` takes them, with the discriminator, from one source
(:mod:`carafe_exp.tasks.inpainting_recipes`): ``global_local`` (default) is mmagic's GL losses
(vanilla GAN at 0.001, L1 on the hole only) with the papers' one PatchGAN on the inpainted region;
``deepfill_v2`` is mmagic's DeepFill v2 (hinge at 0.1, L1 on hole and valid pixels, SN-PatchGAN).
Patch scores enter the adversarial losses weighted by the share of hole pixels under each patch
(``adversarial_region: hole``), so the discriminator judges the inpainted region, or uniformly (``all``).

Lightning counts every optimiser step in ``trainer.global_step``: one iteration is two steps, so a
schedule's ``max_steps`` is twice its iterations.

Metrics (:mod:`carafe_exp.metrics.inpainting`): ``L1`` (%), ``PSNR`` (dB) over the hole, the same
hole in [−1, 1] (``L1_signed``, ``PSNR_signed``), ``L1_whole``, ``PSNR_whole`` and the mean
``hole_area`` (%), logged as ``val/*`` and ``test/*``. Every validation epoch writes a
picture grid (rows: masked input with the hole in white | completion | ground truth) of the first
``num_pictures`` validation images to ``<run dir>/pictures/`` and to TensorBoard / W&B.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid

from carafe_exp.errors import ConfigError
from carafe_exp.runs.image_logging import log_image, write_png
from carafe_exp.metrics.inpainting import METRIC_NAMES, InpaintingMetrics
from carafe_exp.models.patch_discriminator import build_patch_discriminator
from carafe_exp.tasks.base import ResamplingTask
from carafe_exp.tasks.inpainting_recipes import DEFAULT_RECIPE, resolve_recipe
from carafe_exp.tasks.optim import build_lr_scheduler, build_optimizer

log = logging.getLogger(__name__)

ADVERSARIAL_LOSSES = ("hinge", "vanilla")
ADVERSARIAL_REGIONS = ("hole", "all")
OPTIMIZER_STEPS_PER_ITERATION = 2
Batch = Mapping[str, torch.Tensor]


def _to_unit(image: torch.Tensor) -> torch.Tensor:
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean |pred − target| over the pixels where ``weight`` (N, 1, H, W) is 1 (0 when there are none)."""
    total = weight.sum() * pred.shape[1]
    return ((pred - target).abs() * weight).sum() / total.clamp_min(1.0)


class InpaintingTask(ResamplingTask):
    """Trains the completion ``model`` against a PatchGAN and reports L1 / PSNR (see the module docstring)."""

    def __init__(self, model: nn.Module, optimizer: Mapping[str, Any], schedule: Mapping[str, Any],
                 discriminator: Mapping[str, Any] | None = None, recipe: str = DEFAULT_RECIPE,
                 adversarial_loss: str | None = None, adversarial_weight: float | None = None,
                 adversarial_region: str | None = None, l1_hole_weight: float | None = None,
                 l1_valid_weight: float | None = None,
                 discriminator_optimizer: Mapping[str, Any] | None = None, num_pictures: int = 4,
                 fps: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, optimizer, schedule, fps=fps)
        # None: the recipe's value (see carafe_exp.tasks.inpainting_recipes).
        losses, discriminator = resolve_recipe(recipe, {
            "adversarial_loss": adversarial_loss, "adversarial_weight": adversarial_weight,
            "adversarial_region": adversarial_region, "l1_hole_weight": l1_hole_weight,
            "l1_valid_weight": l1_valid_weight}, discriminator)
        self.recipe = recipe
        adversarial_loss, adversarial_region = losses["adversarial_loss"], losses["adversarial_region"]
        if adversarial_loss not in ADVERSARIAL_LOSSES:
            raise ConfigError(f"task.module.adversarial_loss must be one of {list(ADVERSARIAL_LOSSES)}, "
                              f"got {adversarial_loss!r}")
        if adversarial_region not in ADVERSARIAL_REGIONS:
            raise ConfigError(f"task.module.adversarial_region must be one of {list(ADVERSARIAL_REGIONS)}, "
                              f"got {adversarial_region!r}")
        self.automatic_optimization = False
        self.discriminator = build_patch_discriminator(**discriminator)
        self.adversarial_loss = adversarial_loss
        self.adversarial_weight = float(losses["adversarial_weight"])
        self.adversarial_region = adversarial_region
        self.l1_hole_weight = float(losses["l1_hole_weight"])
        self.l1_valid_weight = float(losses["l1_valid_weight"])
        self.discriminator_optimizer_cfg = dict(discriminator_optimizer or optimizer)
        self.num_pictures = int(num_pictures)
        self.metrics = nn.ModuleDict({"val": InpaintingMetrics(), "test": InpaintingMetrics()})
        self._pictures: dict[int, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------- optimisers
    def _schedule_length(self) -> tuple[int, int]:
        """(generator updates in the run, updates per epoch): the lr schedule's length and epoch unit."""
        trainer = self.trainer
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()  # what estimated_stepping_batches does: the batch count is needed
        batches = trainer.num_training_batches
        per_epoch = int(batches) if math.isfinite(batches) and batches > 0 else 0
        limits = []
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and per_epoch:
            limits.append(trainer.max_epochs * per_epoch)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            limits.append(math.ceil(trainer.max_steps / OPTIMIZER_STEPS_PER_ITERATION))
        if not limits:
            if str(self.schedule_cfg.get("policy", "constant")) in ("poly", "cosine"):
                raise ConfigError(f"schedule.policy={self.schedule_cfg.get('policy')} needs a finite run: set "
                                  f"schedule.max_epochs or trainer.max_steps")
            limits.append(max(per_epoch, 1))
        iterations = max(min(limits), 1)
        return iterations, per_epoch or iterations

    def configure_optimizers(self) -> Any:
        total_batch = self.total_batch_size()
        generator = build_optimizer(self.model.parameters(), self.optimizer_cfg, total_batch)
        discriminator = build_optimizer(self.discriminator.parameters(), self.discriminator_optimizer_cfg, total_batch)
        iterations, per_epoch = self._schedule_length()
        schedulers = []
        for opt, cfg in ((generator, self.optimizer_cfg), (discriminator, self.discriminator_optimizer_cfg)):
            base_batch = int(cfg.get("base_batch_size", total_batch))
            schedulers.append(build_lr_scheduler(opt, self.schedule_cfg, iterations, per_epoch,
                                                 base_batch_size=base_batch, total_batch_size=total_batch))
        return [generator, discriminator], schedulers

    # ----------------------------------------------------------------------------------- losses
    def _patch_weight(self, scores: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        if self.adversarial_region == "all":
            return torch.ones_like(scores[:, :1])
        return F.adaptive_avg_pool2d(hole, scores.shape[-2:])

    @staticmethod
    def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        weight = weight.expand_as(values)
        total = weight.sum()
        if total <= 0:
            return values.mean()
        return (values * weight).sum() / total

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """Hinge: E[relu(1 − D(x))] + E[relu(1 + D(y))]; vanilla: BCE with real 1, fake 0."""
        weight = self._patch_weight(real, hole)
        if self.adversarial_loss == "hinge":
            return (self._weighted_mean(F.relu(1.0 - real), weight)
                    + self._weighted_mean(F.relu(1.0 + fake), weight))
        return (self._weighted_mean(F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction="none"),
                                    weight)
                + self._weighted_mean(
                    F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction="none"), weight))

    def generator_adversarial_loss(self, fake: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """Hinge: −E[D(y)]; vanilla: BCE of D(y) against 1 (the non-saturating loss)."""
        weight = self._patch_weight(fake, hole)
        if self.adversarial_loss == "hinge":
            return -self._weighted_mean(fake, weight)
        return self._weighted_mean(F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake), reduction="none"),
                                   weight)

    def generator_losses(self, raw: torch.Tensor, image: torch.Tensor, hole: torch.Tensor,
                         fake_scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's loss terms on its raw output (as mmagic's inpaintors) and their weighted ``total``."""
        l1_hole = masked_l1(raw, image, hole)
        l1_valid = masked_l1(raw, image, 1.0 - hole)
        adversarial = self.generator_adversarial_loss(fake_scores, hole)
        total = self.l1_hole_weight * l1_hole + self.l1_valid_weight * l1_valid + self.adversarial_weight * adversarial
        return {"total": total, "l1_hole": l1_hole, "l1_valid": l1_valid, "adversarial": adversarial}

    # ----------------------------------------------------------------------------------- steps
    def forward(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """The completed image y = (1 − M)·x + M·ŷ in [-1, 1]."""
        return self.composite(self.model(image, hole), image, hole)

    @staticmethod
    def composite(raw: torch.Tensor, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        return hole * raw + (1.0 - hole) * image

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        image, hole = batch["image"], batch["mask"]
        generator_opt, discriminator_opt = self.optimizers()  # type: ignore[misc]
        raw = self.model(image, hole)
        completed = self.composite(raw, image, hole)

        self.toggle_optimizer(discriminator_opt)
        loss_d = self.discriminator_loss(self.discriminator(image, hole),
                                         self.discriminator(completed.detach(), hole), hole)
        discriminator_opt.zero_grad()
        self.manual_backward(loss_d)
        discriminator_opt.step()
        self.untoggle_optimizer(discriminator_opt)

        self.toggle_optimizer(generator_opt)
        losses = self.generator_losses(raw, image, hole, self.discriminator(completed, hole))
        loss_g, l1_hole, l1_valid, adversarial = (losses[k] for k in ("total", "l1_hole", "l1_valid", "adversarial"))
        generator_opt.zero_grad()
        self.manual_backward(loss_g)
        generator_opt.step()
        self.untoggle_optimizer(generator_opt)

        for scheduler in self.lr_schedulers():  # type: ignore[union-attr]
            scheduler.step()
        size = image.shape[0]
        self.log("train/loss_g", loss_g, prog_bar=True, batch_size=size)
        self.log("train/loss_d", loss_d, prog_bar=True, batch_size=size)
        self.log("train/l1_hole", l1_hole, batch_size=size)
        self.log("train/l1_valid", l1_valid, batch_size=size)
        self.log("train/adversarial", adversarial, batch_size=size)

    def _evaluate(self, stage: str, batch: Batch, completed: torch.Tensor) -> None:
        image, hole = batch["image"], batch["mask"]
        self.metrics[stage].update(_to_unit(completed), _to_unit(image), hole, batch.get("index"))
        self._keep_pictures(batch, completed)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("val", batch, self(batch["image"], batch["mask"]))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        image, hole = batch["image"], batch["mask"]
        raw = self.timed_inference(lambda: self.model(image, hole), image.shape[0])
        self._evaluate("test", batch, self.composite(raw, image, hole))

    def _log_metrics(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        for name in METRIC_NAMES:
            # Already gathered from every rank by the metric: the same value everywhere.
            self.log(f"{stage}/{name}", values[name].float(), prog_bar=name in ("L1", "PSNR"))
        self.metrics[stage].reset()

    def on_validation_epoch_start(self) -> None:
        self._pictures = {}

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        if not self.trainer.sanity_checking:
            self._write_pictures(f"val_epoch{self.current_epoch:03d}", "val/completion")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._pictures = {}

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self.log_fps()
        self._write_pictures("test", "test/completion")

    # ----------------------------------------------------------------------------------- pictures
    def _keep_pictures(self, batch: Batch, completed: torch.Tensor) -> None:
        indices = batch.get("index")
        if indices is None or self.num_pictures <= 0:
            return
        for row, index in enumerate(indices.tolist()):
            if index < self.num_pictures and index not in self._pictures:
                image, hole = batch["image"][row], batch["mask"][row]
                masked = image * (1.0 - hole) + hole  # the hole in white
                self._pictures[index] = torch.stack([_to_unit(masked), _to_unit(completed[row]), _to_unit(image)])

    def _gathered_pictures(self) -> list[torch.Tensor]:
        if self.trainer.world_size <= 1:
            return [self._pictures[i] for i in sorted(self._pictures)]
        # Each rank saw some of the first images (the sampler deals them out); gather them on every rank.
        import torch.distributed as dist

        gathered: list[dict[int, torch.Tensor]] = [{} for _ in range(self.trainer.world_size)]
        dist.all_gather_object(gathered, {i: p.cpu() for i, p in self._pictures.items()})
        merged: dict[int, torch.Tensor] = {}
        for part in gathered:
            for index, picture in part.items():
                merged.setdefault(index, picture)
        return [merged[i] for i in sorted(merged)]

    def _write_pictures(self, name: str, tag: str) -> None:
        pictures = self._gathered_pictures()
        if not pictures or not self.trainer.is_global_zero:
            return
        grid = make_grid(torch.cat(pictures).float().cpu(), nrow=3, padding=2, pad_value=1.0)
        path = write_png(grid, Path(self.trainer.default_root_dir) / "pictures" / f"{name}.png")
        log_image(self.trainer, tag, grid, step=self.global_step)
        log.info("pictures written to %s", path)

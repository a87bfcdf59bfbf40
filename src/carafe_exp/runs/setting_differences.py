"""The paper's machine against this run's: total batch, devices x per-device batch, BatchNorm, images seen.

A paper table experiment includes one ``conf/paper_setting/*.yaml`` (the ``paper_setting`` node):
how many devices the authors trained on, how many images each took, and how BatchNorm computed its
statistics (frozen, per device, or synchronised over every device). At the start of a run
:func:`apply_paper_setting`

- keeps the paper's number of training images under an iteration-counted schedule
  (``schedule.iterations_at_batch``, set by ``poly_100k`` and ``gl_500k``): when the total batch is
  not the one the iterations are counted at, ``trainer.max_steps`` is scaled by their ratio (the
  schedule itself keeps the paper's count, so the record shows both) and the log says so;
- logs every remaining difference from the paper's machine as a warning, and returns them as
  ``[{"key", "ours", "paper"}, ...]``, which the run writes to metrics.json as
  ``"setting_differences"`` and ``carafe-tables`` lists under the table.

The learning rate already follows the total batch linearly (``carafe_exp.tasks.optim``); what
that cannot make equal (BatchNorm statistics over fewer images, a different number of devices)
is what this module reports.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from carafe_exp.errors import ConfigError

log = logging.getLogger("carafe_exp")

# How BatchNorm computes its statistics in training.
BN_FROZEN, BN_PER_DEVICE, BN_SYNCHRONISED = "frozen", "per_device", "synchronised"
BN_REGIMES = (BN_FROZEN, BN_PER_DEVICE, BN_SYNCHRONISED)
_CUDA_ACCELERATORS = ("gpu", "cuda")


@dataclass(frozen=True)
class PaperMachine:
    """The machine a paper trained a table on (a ``conf/paper_setting/*.yaml``); None where not stated."""

    total_batch: int
    devices: int | None = None
    per_device_batch: int | None = None
    batchnorm: str | None = None
    source: str = ""
    # The ResNet stem the paper trained with (CARAFE Tables 5-6: CSAIL's deep stem); None where any.
    backbone_stem: str | None = None

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any], where: str = "paper_setting") -> PaperMachine:
        """Read and check one paper_setting node (a composed config's or a YAML file's)."""
        try:
            machine = cls(total_batch=int(node["total_batch"]),
                          devices=None if node.get("devices") is None else int(node["devices"]),
                          per_device_batch=None if node.get("per_device_batch") is None
                          else int(node["per_device_batch"]),
                          batchnorm=None if node.get("batchnorm") is None else str(node["batchnorm"]),
                          source=str(node.get("source") or ""),
                          backbone_stem=None if node.get("backbone_stem") is None else str(node["backbone_stem"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{where}: expected total_batch, devices, per_device_batch, batchnorm ({error})") \
                from error
        if machine.batchnorm is not None and machine.batchnorm not in BN_REGIMES:
            raise ConfigError(f"{where}.batchnorm={machine.batchnorm}: expected one of {', '.join(BN_REGIMES)} "
                              "or null (not stated)")
        if machine.devices and machine.per_device_batch and machine.devices * machine.per_device_batch \
                != machine.total_batch:
            raise ConfigError(f"{where}: devices x per_device_batch = {machine.devices} x "
                              f"{machine.per_device_batch} is not total_batch={machine.total_batch}")
        return machine

    def batchnorm_text(self) -> str | None:
        """``synchronised over 16 images`` / ``per device, 64 images`` / ``frozen``; None where not stated."""
        images = self.total_batch if self.batchnorm == BN_SYNCHRONISED else self.per_device_batch
        return batchnorm_text(self.batchnorm, images)

    def describe(self) -> str:
        """``8 devices x 2 images = batch 16, BatchNorm synchronised over 16 images``."""
        if self.devices and self.per_device_batch:
            batch = f"{self.devices} devices x {self.per_device_batch} images = batch {self.total_batch}"
        else:
            batch = f"batch {self.total_batch} (devices not stated)"
        bn = self.batchnorm_text()
        return f"{batch}, BatchNorm {bn if bn else 'not stated'}"


def batchnorm_text(regime: str | None, images: int | None) -> str | None:
    """How BatchNorm normalises, as the differences name it."""
    if regime is None:
        return None
    if regime == BN_FROZEN:
        return "frozen (statistics of the pretrained weights)"
    where = "synchronised over every device" if regime == BN_SYNCHRONISED else "per device"
    return f"{where}, {images} images" if images else where


def planned_world_size(trainer: Mapping[str, Any]) -> int:
    """The processes Lightning will start for ``trainer.*`` (devices x nodes), read before it is built.

    ``devices: auto`` is every visible CUDA device when the accelerator may be one, else one process,
    as Lightning decides.
    """
    from carafe_exp.runs.preflight import device_count, visible_devices

    devices = trainer.get("devices", 1)
    count = device_count(devices)
    if count is None:
        accelerator = str(trainer.get("accelerator", "auto"))
        count = 1 if accelerator == "cpu" else visible_devices(accelerator)
    return max(int(count), 1) * max(int(trainer.get("num_nodes", 1) or 1), 1)


def _our_batchnorm(cfg: DictConfig, world_size: int, per_device: int) -> tuple[str, int]:
    if OmegaConf.select(cfg, "model.backbone.norm_eval", default=False):
        return BN_FROZEN, 0
    if bool(OmegaConf.select(cfg, "trainer.sync_batchnorm", default=False)) and world_size > 1:
        return BN_SYNCHRONISED, per_device * world_size
    return BN_PER_DEVICE, per_device


def scale_iterations(cfg: DictConfig, total_batch: int) -> tuple[int, int] | None:
    """Scale ``trainer.max_steps`` so an iteration-counted schedule sees the paper's images.

    Returns ``(paper iterations, ours)`` when it scaled, None when the schedule is not counted in
    iterations at a batch, the batch is the same, or ``trainer.max_steps`` was given explicitly.
    """
    at_batch = OmegaConf.select(cfg, "schedule.iterations_at_batch", default=None)
    steps = OmegaConf.select(cfg, "schedule.max_steps", default=None)
    if at_batch is None or steps is None or int(steps) <= 0 or int(at_batch) == total_batch:
        return None
    # trainer.max_steps follows schedule.max_steps unless the user set it: then theirs is the length.
    if not OmegaConf.is_interpolation(cfg.trainer, "max_steps"):
        return None
    scaled = max(int(round(int(steps) * int(at_batch) / total_batch)), 1)
    cfg.trainer.max_steps = scaled
    return int(steps), scaled


def setting_differences(cfg: DictConfig, machine: PaperMachine, world_size: int,
                        scaled: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Every difference of this run from ``machine``: ``[{"key", "ours", "paper"}, ...]``.

    Keys: ``total_batch``, ``devices``, ``per_device_batch``, ``bn_statistics``, ``backbone_stem`` and, where the
    images seen differ (an explicit ``trainer.max_steps`` under an iteration-counted schedule),
    ``images_seen``; the scaled iteration count is listed as ``iterations`` (its images are the paper's).
    """
    per_device = int(cfg.data.batch_size)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    total = per_device * world_size * accumulate
    differences: list[dict[str, Any]] = []

    def differ(key: str, ours: Any, paper: Any) -> None:
        if paper is not None and ours != paper:
            differences.append({"key": key, "ours": ours, "paper": paper})

    differ("total_batch", total, machine.total_batch)
    differ("devices", world_size, machine.devices)
    differ("per_device_batch", per_device, machine.per_device_batch)
    regime, images = _our_batchnorm(cfg, world_size, per_device)
    differ("bn_statistics", batchnorm_text(regime, images), machine.batchnorm_text())
    differ("backbone_stem", OmegaConf.select(cfg, "model.backbone.stem", default=None), machine.backbone_stem)
    if scaled is not None:
        differ("iterations", scaled[1], scaled[0])
    else:
        at_batch = OmegaConf.select(cfg, "schedule.iterations_at_batch", default=None)
        steps = OmegaConf.select(cfg, "schedule.max_steps", default=None)
        max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
        if at_batch is not None and steps and int(steps) > 0 and max_steps is not None and int(max_steps) > 0:
            differ("images_seen", int(max_steps) * total, int(steps) * int(at_batch))
    return differences


def _rank_zero() -> bool:
    # Every DDP process runs the job; one says what differs. Lightning reads the rank from the
    # environment its launcher (or torchrun, SLURM) sets, before any Trainer exists.
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def confirm_world_size(cfg: DictConfig, actual: int) -> None:
    """Warn when Lightning started another number of processes than the differences were computed for."""
    planned = planned_world_size(cfg.trainer)
    if planned != actual and _rank_zero():
        log.warning("setting_differences and the schedule's length assumed %d processes, Lightning runs %d: give "
                    "trainer.devices explicitly for an exact record", planned, actual)


def apply_paper_setting(cfg: DictConfig) -> list[dict[str, Any]] | None:
    """Scale an iteration-counted schedule to the paper's images and warn of every other difference.

    None when the config has no ``paper_setting`` (not a paper table's experiment); the schedule is
    scaled either way (see the module docstring).
    """
    world_size = planned_world_size(cfg.trainer)
    per_device = int(cfg.data.batch_size)
    total = per_device * world_size * int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    scaled = scale_iterations(cfg, total)
    speak = _rank_zero()
    if scaled is not None and speak:
        at_batch = int(cfg.schedule.iterations_at_batch)
        log.warning("schedule: %d iterations at a total batch of %d are %d images; at our total batch of %d "
                    "trainer.max_steps=%d keeps them (schedule.iterations_at_batch=null keeps the iterations)",
                    scaled[0], at_batch, scaled[0] * at_batch, total, scaled[1])
    node = cfg.get("paper_setting")
    if node is None:
        return None
    machine = PaperMachine.from_mapping(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    differences = setting_differences(cfg, machine, world_size, scaled)
    if differences and speak:
        log.warning("this run differs from the paper's machine (%s; %s):", machine.describe(), machine.source)
        for item in differences:
            log.warning("  %s: ours %s, the paper's %s", item["key"], item["ours"], item["paper"])
        if any(item["key"] in ("devices", "total_batch") for item in differences):
            log.warning("  the paper's machine: trainer=ddp trainer.devices=%s data.batch_size=%s",
                        machine.devices or "<n>", machine.per_device_batch or "<images per device>")
    return differences


__all__ = ["BN_FROZEN", "BN_PER_DEVICE", "BN_REGIMES", "BN_SYNCHRONISED", "PaperMachine", "apply_paper_setting",
           "batchnorm_text", "confirm_world_size", "planned_world_size", "scale_iterations", "setting_differences"]

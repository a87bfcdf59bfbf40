"""Optimiser and learning-rate schedule from config, with the linear scaling rule.

The task config gives the paper's optimiser (``lr`` at ``base_batch_size`` images per step);
the schedule config gives its length and shape. The learning rate is scaled linearly to the
real total batch (per-device batch × devices × nodes × gradient accumulation), and the
scaling is logged so a run says what it actually used. With ``warmup_scales_with_batch`` the
warm-up, given in iterations at the paper's batch, is scaled inversely so that it spans the same
number of images (mmdetection v1's 500 iterations at batch 16 are 4000 iterations at batch 2).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from carafe_exp.errors import ConfigError

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_POLICIES = ("step", "poly", "cosine", "constant")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def is_norm_parameter(name: str, parameter: nn.Parameter, module: nn.Module) -> bool:
    """An affine parameter of a normalisation layer (BatchNorm's γ and β)."""
    return isinstance(module, NORM_LAYERS)


def weight_decay_groups(root: nn.Module, exempt: Callable[[str, nn.Parameter, nn.Module], bool]
                        ) -> list[dict[str, Any]]:
    """The trainable parameters of ``root`` in two optimiser groups: with weight decay, and without
    (those ``exempt(name, parameter, owning module)`` selects)."""
    decay, no_decay = [], []
    for module in root.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.requires_grad:
                (no_decay if exempt(name, parameter, module) else decay).append(parameter)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(lr: float, base_batch_size: int, total_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr × total / base."""
    if base_batch_size <= 0 or total_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive, got base={base_batch_size} total={total_batch_size}")
    return lr * total_batch_size / base_batch_size


def build_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], cfg: Mapping[str, Any],
                    total_batch_size: int) -> torch.optim.Optimizer:
    """Make the optimiser named by ``cfg['name']`` (sgd, adam, adamw) with the linearly scaled lr."""
    name = str(cfg.get("name", "sgd")).lower()
    base_batch = int(cfg.get("base_batch_size", total_batch_size))
    lr = scaled_lr(float(cfg["lr"]), base_batch, total_batch_size)
    if total_batch_size != base_batch:
        log.info("learning rate scaled linearly: %.4g at batch %d -> %.4g at batch %d",
                 float(cfg["lr"]), base_batch, lr, total_batch_size)
    weight_decay = float(cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                               weight_decay=weight_decay, nesterov=bool(cfg.get("nesterov", False)))
    if name in ("adam", "adamw"):
        betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.999)))
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=betas, weight_decay=weight_decay)  # type: ignore[arg-type]
    raise ConfigError(f"task.module.optimizer.name={name}: unknown optimizer; available: {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, *, total_steps: int, steps_per_epoch: int, policy: str, milestones: Iterable[float] = (),
              gamma: float = 0.1, power: float = 0.9, min_factor: float = 0.0, warmup_iters: int = 0,
              warmup_factor: float = 0.001) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based).

    ``milestones`` are epochs for the step policy (mmdetection's 1x: [8, 11]). Warm-up is linear
    from ``warmup_factor`` to 1 over ``warmup_iters`` steps, multiplied onto the policy.
    """
    total_steps = max(int(total_steps), 1)
    if policy == "step":
        epoch = step / max(steps_per_epoch, 1)
        factor = gamma ** sum(1 for m in milestones if epoch >= float(m))
    elif policy == "poly":
        factor = max(1.0 - step / total_steps, 0.0) ** power
        factor = min_factor + (1.0 - min_factor) * factor
    elif policy == "cosine":
        factor = min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * min(step / total_steps, 1.0)))
    elif policy == "constant":
        factor = 1.0
    else:
        raise ConfigError(f"schedule.policy={policy}: unknown lr policy; available: {', '.join(LR_POLICIES)}")
    if warmup_iters > 0 and step < warmup_iters:
        alpha = step / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


def scaled_warmup_iters(warmup_iters: int, base_batch_size: int, total_batch_size: int) -> int:
    """Warm-up iterations at ``total_batch_size`` covering the images of ``warmup_iters`` at ``base_batch_size``."""
    if base_batch_size <= 0 or total_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive, got base={base_batch_size} total={total_batch_size}")
    return int(round(warmup_iters * base_batch_size / total_batch_size))


def check_warmup(schedule: Mapping[str, Any]) -> None:
    """The warm-up is given once: in iterations or in epochs."""
    warmup_iters = schedule.get("warmup_iters", 0) or 0
    warmup_epochs = schedule.get("warmup_epochs", 0) or 0
    if float(warmup_iters) > 0 and float(warmup_epochs) > 0:
        raise ConfigError(f"schedule.warmup_epochs={warmup_epochs} and schedule.warmup_iters={warmup_iters} both set "
                          "the warm-up: give one of them (the other 0)")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: Mapping[str, Any], total_steps: int,
                       steps_per_epoch: int, base_batch_size: int | None = None,
                       total_batch_size: int | None = None) -> LambdaLR:
    """A per-step LambdaLR following ``schedule`` (policy, milestones, gamma, power, warm-up).

    The warm-up is ``schedule.warmup_iters`` optimiser steps, or ``schedule.warmup_epochs`` epochs
    (Goyal et al.'s gradual warm-up, the same number of images at any batch). With
    ``schedule.warmup_scales_with_batch`` and both batch sizes given, a warm-up given in
    iterations is scaled by ``base_batch_size / total_batch_size`` (:func:`scaled_warmup_iters`).
    """
    check_warmup(schedule)
    warmup_iters = int(schedule.get("warmup_iters", 0) or 0)
    warmup_epochs = float(schedule.get("warmup_epochs", 0) or 0)
    if warmup_epochs > 0:
        warmup_iters = int(round(warmup_epochs * steps_per_epoch))
        log.info("warm-up over %g epochs: %d iterations", warmup_epochs, warmup_iters)
    elif schedule.get("warmup_scales_with_batch", False) and base_batch_size and total_batch_size \
            and base_batch_size != total_batch_size:
        scaled = scaled_warmup_iters(warmup_iters, base_batch_size, total_batch_size)
        log.info("warm-up scaled with the batch: %d iterations at batch %d -> %d iterations at batch %d",
                 warmup_iters, base_batch_size, scaled, total_batch_size)
        warmup_iters = scaled
    kwargs = dict(
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        policy=str(schedule.get("policy", "constant")),
        milestones=tuple(schedule.get("milestones", ()) or ()),
        gamma=float(schedule.get("gamma", 0.1)),
        power=float(schedule.get("power", 0.9)),
        min_factor=float(schedule.get("min_lr_factor", 0.0)),
        warmup_iters=warmup_iters,
        warmup_factor=float(schedule.get("warmup_factor", 0.001)),
    )
    return LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))

"""One job of ``carafe-exp``: build everything, fit and/or test, write metrics.json.

The config arrives checked: the CLI runs :func:`carafe_exp.runs.preflight.check_config` first, before
Lightning is imported, so a bad setting answers in one line without this module's imports.

Data flows one way: the config instantiates the datamodule, the model (a ``build_*`` function
that takes plain arguments), the task module, the trainer with its loggers and callbacks.

Resuming and evaluating (``ckpt_path``):
- the checkpoint is read first: a file that is not a checkpoint, or weights of another model,
  is one line naming what it holds and what was built;
- a checkpoint whose training already reached the configured end is not trained again: with a
  completed ``metrics.json`` in the run directory nothing is done, otherwise it is evaluated;
- after training, the final weights (= ``last.ckpt``) are tested, which is what the papers report.

A run that does not end (:mod:`carafe_exp.runs.interruption`, :mod:`carafe_exp.runs.divergence`)
writes its ``metrics.json`` with ``"status": "interrupted"`` or ``"diverged"`` and re-raises, so the
CLI exits non-zero. A sweep job first looks at the record its directory already holds
(:mod:`carafe_exp.runs.rerun`): skipped, resumed or run again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from omegaconf import DictConfig, OmegaConf

from carafe_exp.data.resumable_loader import LoaderPosition
from carafe_exp.runs import loggers as run_loggers
from carafe_exp.runs import rerun as job_rerun
from carafe_exp.runs.atomic_checkpoint_io import AtomicCheckpointIO
from carafe_exp.runs.callbacks import RunIdentity, ThroughputTimer
from carafe_exp.runs.divergence import RunDiverged
from carafe_exp.runs.interruption import InterruptionCallback, RunInterrupted, StopRequest
from carafe_exp.runs.interruption import describe as describe_interruption
from carafe_exp.runs.checkpoint_inspection import CheckpointFile, resolve_ckpt_path
from carafe_exp.errors import ConfigError
from carafe_exp.models.build import build_model
from carafe_exp.runs.name import model_description, run_name
from carafe_exp.runs.setting_differences import apply_paper_setting, confirm_world_size
from carafe_exp.runs.record import (METRICS_FILE, STATUS_COMPLETED, STATUS_DIVERGED, STATUS_INTERRUPTED,
                                   build_record, device_description, read_record, write_record)
from carafe_exp.sweeps.dirname import current_swept_overrides

log = logging.getLogger("carafe_exp")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def output_dir_of_job() -> Path:
    """The running job's output directory (Hydra's ``runtime.output_dir``), else the working directory."""
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def hydra_choices() -> dict[str, Any]:
    """The config-group choices of the running job (``{"model": "faster_rcnn", ...}``)."""
    if not HydraConfig.initialized():
        return {}
    return {str(k): v for k, v in OmegaConf.to_container(HydraConfig.get().runtime.choices).items()}


def job_overrides() -> list[str]:
    """The running job's command-line overrides."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _adapt_trainer(cfg: DictConfig) -> None:
    """Trainer settings that depend on the task or the machine.

    - SyncBatchNorm exists only for CUDA in torch's DDP: CPU processes keep per-process BatchNorm.
    - A task whose backward passes each reach only part of the model (the two networks of a GAN)
      declares ``task.ddp_find_unused_parameters``; plain DDP then becomes Lightning's
      ``ddp_find_unused_parameters_true``, or DDP fails on the second backward pass.
    """
    import torch

    if cfg.task.get("ddp_find_unused_parameters") and str(cfg.trainer.get("strategy", "auto")) == "ddp":
        log.info("trainer.strategy=ddp_find_unused_parameters_true: task=%s updates its networks in separate "
                 "backward passes", cfg.task.get("name"))
        cfg.trainer.strategy = "ddp_find_unused_parameters_true"

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if cfg.trainer.get("sync_batchnorm") and on_cpu:
        log.warning("trainer.sync_batchnorm needs CUDA devices; CPU processes keep per-process BatchNorm")
        cfg.trainer.sync_batchnorm = False


def node_arguments(node: DictConfig, *keys: str) -> dict[str, Any]:
    """``node`` resolved, minus ``keys`` that describe it rather than being arguments of its ``_target_``."""
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)
    return {key: value for key, value in plain.items() if key not in keys}


def route_lightning_logs() -> None:
    """Lightning's messages go through the job's logging (stdout and the job's log file), once.

    Imported after Hydra set up logging, Lightning both prints through its own stderr handler and
    propagates to the root logger; its handler is dropped so each message appears once.
    """
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every ``callbacks.<name>`` node with a ``_target_`` whose ``enabled`` is not false."""
    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        if not node.get("enabled", True):
            continue
        callbacks.append(instantiate(node_arguments(node, "enabled")))
    return callbacks


def build_trainer(node: DictConfig, **kwargs: Any) -> L.Trainer:
    """The Lightning Trainer of ``trainer.*``; settings Lightning refuses are one ``ConfigError`` line.

    Lightning validates its arguments (devices, precision, max_epochs, strategy, ...) when the
    Trainer is built; its message names the argument, and nothing else is built from them here.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
            reason = " ".join(str(cause).split())
            raise ConfigError(f"the trainer settings (trainer.*, schedule.max_epochs/max_steps) are not valid: "
                              f"{reason}") from error
        raise


def _limits(cfg: DictConfig) -> tuple[int | None, int | None]:
    max_epochs = cfg.trainer.get("max_epochs")
    max_steps = cfg.trainer.get("max_steps", -1)
    return (None if max_epochs is None else int(max_epochs)), (None if max_steps is None else int(max_steps))


def _completed_record(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        record = read_record(path)
    except (OSError, ValueError):
        return None
    return record if record.get("status") == STATUS_COMPLETED else None


def _last_checkpoint(output_dir: Path) -> Path | None:
    path = output_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def _sweep_job_plan(cfg: DictConfig, output_dir: Path, config: dict[str, Any]) -> job_rerun.JobPlan | None:
    """What this job does given its directory's record, in a sweep launched without ``ckpt_path``; else None."""
    rerun = job_rerun.check_rerun(cfg.get("rerun"))
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    if cfg.get("ckpt_path") is not None or not cfg.train:
        return None
    return job_rerun.plan_job(output_dir, config, rerun)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job described by ``cfg`` (already checked by the CLI); return its metrics.json record (rank 0 writes it)."""
    started = time.perf_counter()
    route_lightning_logs()
    output_dir = output_dir_of_job()
    _adapt_trainer(cfg)
    # The paper's images under an iteration-counted schedule; every other difference from the
    # paper's machine is a warning now and a list in metrics.json.
    differences = apply_paper_setting(cfg)
    choices = hydra_choices()
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    description = model_description(config, choices)
    name = str(cfg.name) if cfg.get("name") else run_name(config, choices, current_swept_overrides())
    config["name"] = name
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    plan = _sweep_job_plan(cfg, output_dir, config)
    if plan is not None:
        job_rerun.write_action(output_dir, plan)
        log.info("sweep job %s: %s (%s)", output_dir.name, plan.action, plan.reason)
        if plan.action in (job_rerun.ACTION_SKIPPED, job_rerun.ACTION_KEPT):
            assert plan.record is not None
            return plan.record
        if plan.action == job_rerun.ACTION_RESUMED:
            ckpt_path = plan.checkpoint
    checkpoint = CheckpointFile.read(ckpt_path) if ckpt_path is not None else None
    train = bool(cfg.train)
    if train and checkpoint is not None and checkpoint.training_finished(*_limits(cfg)):
        previous = _completed_record(output_dir)
        if previous is not None and cfg.test:
            log.info("%s: training already reached its end (epoch %d, step %d) and %s holds its result; "
                     "nothing to do", ckpt_path, checkpoint.epoch, checkpoint.global_step, output_dir / METRICS_FILE)
            return previous
        log.info("%s: training already reached its end (epoch %d, step %d); evaluating it only", ckpt_path,
                 checkpoint.epoch, checkpoint.global_step)
        train = False
    L.seed_everything(int(cfg.seed), workers=True)

    datamodule = instantiate(node_arguments(cfg.data, "kind"))
    # Tasks without classes (inpainting) have data modules without ``num_classes``.
    model_kwargs: dict[str, Any] = {}
    if getattr(datamodule, "num_classes", None) is not None:
        model_kwargs["num_classes"] = datamodule.num_classes
    model = build_model(cfg.model, upsampler=cfg.upsampler, downsampler=cfg.downsampler, **model_kwargs)
    module = instantiate(cfg.task.module, model=model, schedule=_plain(cfg.schedule), _convert_="all")
    if checkpoint is not None:
        checkpoint.check_fits(module, description)

    callbacks = build_callbacks(cfg)
    timer = ThroughputTimer()
    stop_request = StopRequest()
    callbacks += [timer, RunIdentity(description), InterruptionCallback(stop_request), LoaderPosition()]
    loggers = run_loggers.build_loggers(cfg, name, description)
    # ``callbacks=none`` means none: no checkpoint, progress bar or summary that Lightning adds by itself.
    trainer = build_trainer(
        cfg.trainer, callbacks=callbacks, logger=loggers or False,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
        enable_progress_bar=any(isinstance(cb, ProgressBar) for cb in callbacks),
        enable_model_summary=any(isinstance(cb, ModelSummary) for cb in callbacks),
        plugins=[AtomicCheckpointIO()])
    confirm_world_size(cfg, trainer.world_size)

    def unfinished_record(status: str, **details: Any) -> None:
        record = build_record(task=str(cfg.task.name), overrides=job_overrides(), metrics={}, config=config,
                              wall_time_s=time.perf_counter() - started, throughput=timer.summary(),
                              status=status, name=name, device=device_description(
                                  trainer.accelerator.__class__.__name__.removesuffix("Accelerator").lower(),
                                  trainer.num_devices * trainer.num_nodes),
                              resumed_from=checkpoint.summary() if checkpoint is not None and train else None,
                              **details)
        if trainer.is_global_zero:
            log.info("metrics written to %s", write_record(output_dir, record))

    results: list[dict[str, float]] = []
    stop_request.install()
    try:
        if train:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
            if stop_request.signum is not None:  # arrived after the last training step
                raise RunInterrupted(stop_request.signum, _last_checkpoint(output_dir))
        if cfg.test:
            # After fit, evaluate the final weights (what the papers report); otherwise the checkpoint.
            # Lightning's own results table would repeat the one printed below.
            results = trainer.test(module, datamodule=datamodule, verbose=False,
                                   ckpt_path=None if train or ckpt_path is None else str(ckpt_path))
    except RunInterrupted as stop:
        if stop.checkpoint is None:
            stop.checkpoint = _last_checkpoint(output_dir)
        stop.epoch, stop.global_step = trainer.current_epoch, trainer.global_step
        details = describe_interruption(stop)
        unfinished_record(STATUS_INTERRUPTED, error=f"interrupted by {details['signal']} at step {stop.global_step}",
                          interruption=details)
        stop.recorded = True
        # A cluster launcher's own handler (submitit's requeue on SIGUSR2) runs once the step is saved.
        stop_request.chain_previous()
        raise
    except RunDiverged as diverged:
        kept = _last_checkpoint(output_dir)
        diverged.checkpoint = kept
        unfinished_record(STATUS_DIVERGED, error=f"diverged at step {diverged.global_step} ({diverged.term} = "
                                                 f"{diverged.value})",
                          divergence={"global_step": diverged.global_step, "epoch": diverged.epoch,
                                      "term": diverged.term, "value": str(diverged.value),
                                      "checkpoint": str(kept) if kept is not None else None})
        raise
    finally:
        stop_request.uninstall()
        run_loggers.finish_loggers(loggers)

    metrics = {key.removeprefix("test/"): value for row in results for key, value in row.items()
               if key.startswith("test/")}
    weights = checkpoint.summary() if checkpoint is not None and not train else None
    record = build_record(task=str(cfg.task.name), overrides=job_overrides(), metrics=metrics, config=config,
                          wall_time_s=time.perf_counter() - started, throughput=timer.summary(),
                          device=device_description(trainer.accelerator.__class__.__name__.removesuffix(
                              "Accelerator").lower(), trainer.num_devices * trainer.num_nodes),
                          name=name, resumed_from=checkpoint.summary() if checkpoint is not None and train else None,
                          evaluated_checkpoint=weights, wandb=run_loggers.wandb_summary(loggers),
                          setting_differences=differences)
    if trainer.is_global_zero:
        path = write_record(output_dir, record)
        log.info("metrics written to %s", path)
        print_metrics(record)
    return record


# Metric names that hold one value per class.
PER_CLASS_PREFIXES = ("IoU/",)


def print_metrics(record: dict[str, Any]) -> None:
    """The final metrics as one table on standard output."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{record['task']}: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    per_class = 0
    for key, value in record["metrics"].items():
        # Per-class values (150 IoU/<class> rows on ADE20K) stay in metrics.json, not on screen.
        if key.startswith(PER_CLASS_PREFIXES):
            per_class += 1
            continue
        table.add_row(key, f"{value:.2f}")
    if per_class:
        table.add_row("per-class values", f"{per_class} in metrics.json")
    for key, value in record["throughput"].items():
        table.add_row(key, f"{value:.1f}")
    Console(stderr=False).print(table)

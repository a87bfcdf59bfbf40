"""The ``carafe-exp`` entry point: compose the config, build everything, fit/test, write metrics.json.

    carafe-exp task=detection upsampler=carafe
    carafe-exp -m upsampler=nearest,carafe
    carafe-exp train=false ckpt_path=outputs/runs/.../checkpoints/last.ckpt

Data flows one way: the config instantiates the datamodule, the model (a ``build_*`` function
that takes plain arguments), the task module, the trainer with its loggers and callbacks.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from carafe_exp.allocator import configure_cpu_allocator
from carafe_exp.callbacks import ThroughputTimer
from carafe_exp.errors import ConfigError, UserInputError
from carafe_exp.paths import config_dir
from carafe_exp.run_record import METRICS_FILE, build_record, write_json_atomic

log = logging.getLogger("carafe_exp")

SWEEP_DIRNAME_LIMIT = 120


def short_dirname(overrides: str, limit: int = SWEEP_DIRNAME_LIMIT) -> str:
    """A sweep job's directory name from its overrides: no slashes, at most ``limit`` characters.

    Long override lists are cut and given a hash of the whole, so names stay unique and valid
    (file systems refuse names over 255 bytes; ``data.root=/a/b`` must not nest directories).
    """
    name = overrides.replace("/", "_") or "defaults"
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:limit - len(digest) - 1]}~{digest}"


# Registered at import, so every process that runs a job (local, DDP worker, submitit) has it.
OmegaConf.register_new_resolver("short_dirname", short_dirname, replace=True)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` means this run dir's last.ckpt; a run directory means its checkpoints/last.ckpt."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        candidate = output_dir / "checkpoints" / "last.ckpt"
        if not candidate.is_file():
            raise ConfigError(
                f"ckpt_path=last: no checkpoint at {candidate}; resume a run by giving its directory, "
                f"e.g. hydra.run.dir=<run dir> ckpt_path=last, or ckpt_path=<run dir or .ckpt file>")
        return str(candidate)
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no checkpoint file at {path}")
    return str(path)


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        if name == "wandb":
            node = _wandb_settings(node)
        loggers.append(instantiate(node))
    return loggers


def _wandb_settings(node: DictConfig) -> DictConfig:
    """Offline unless the user is logged in; one group per sweep (the sweep directory)."""
    node = node.copy()
    if node.get("offline") is None:
        import wandb

        node.offline = not bool(wandb.api.api_key)
    if node.get("group") is None and _is_multirun():
        hydra_cfg = HydraConfig.get()
        node.group = Path(hydra_cfg.sweep.dir).name
    return node


def _finish_wandb(loggers: list[Any]) -> None:
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


def _check_launch(cfg: DictConfig) -> None:
    strategy = str(cfg.trainer.get("strategy", "auto"))
    devices = cfg.trainer.get("devices", 1)
    many = devices in ("auto", -1) or (isinstance(devices, int) and devices > 1) or not isinstance(devices, int)
    launcher = HydraConfig.get().runtime.choices.get("hydra/launcher", "basic") if HydraConfig.initialized() else ""
    if _is_multirun() and launcher == "basic" and strategy.startswith("ddp") and many:
        raise ConfigError(
            "a sweep with the basic launcher runs each job as one process and cannot start DDP workers; "
            "run the jobs one by one, or sweep with hydra/launcher=submitit_slurm (one SLURM task per GPU)")


def _adapt_trainer(cfg: DictConfig) -> None:
    """SyncBatchNorm exists only for CUDA in torch's DDP: CPU processes keep per-process BatchNorm."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if cfg.trainer.get("sync_batchnorm") and on_cpu:
        log.warning("trainer.sync_batchnorm needs CUDA devices; CPU processes keep per-process BatchNorm")
        cfg.trainer.sync_batchnorm = False


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job described by ``cfg``; return its metrics.json record (rank 0 also writes it)."""
    started = time.perf_counter()
    output_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    _check_launch(cfg)
    _adapt_trainer(cfg)
    L.seed_everything(int(cfg.seed), workers=True)

    datamodule = instantiate(cfg.data)
    # Tasks without classes (inpainting) have data modules without ``num_classes``.
    model_kwargs: dict[str, Any] = {}
    if getattr(datamodule, "num_classes", None) is not None:
        model_kwargs["num_classes"] = datamodule.num_classes
    model = instantiate(cfg.model, upsampler=_plain(cfg.upsampler), downsampler=_plain(cfg.downsampler),
                        _convert_="all", **model_kwargs)
    module = instantiate(cfg.task.module, model=model, schedule=_plain(cfg.schedule), _convert_="all")

    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()
                 if isinstance(node, DictConfig) and "_target_" in node]
    loggers = _build_loggers(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    results: list[dict[str, float]] = []
    try:
        if cfg.train:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.test:
            # After fit, evaluate the final weights (what the papers report); otherwise the checkpoint.
            results = trainer.test(module, datamodule=datamodule, ckpt_path=None if cfg.train else ckpt_path)
    finally:
        _finish_wandb(loggers)

    metrics = {key.removeprefix("test/"): value for row in results for key, value in row.items()
               if key.startswith("test/")}
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, ThroughputTimer)), None)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    record = build_record(task=str(cfg.task.name), overrides=overrides, metrics=metrics,
                          config=OmegaConf.to_container(cfg, resolve=True),
                          wall_time_s=time.perf_counter() - started,
                          throughput=timer.summary() if timer else {})
    if trainer.is_global_zero:
        path = write_json_atomic(output_dir / METRICS_FILE, record)
        log.info("metrics written to %s", path)
        _print_metrics(record)
    return record


def find_user_error(error: BaseException) -> UserInputError | None:
    """The UserInputError behind ``error``, through Hydra's InstantiationException and the like."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserInputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(error: BaseException) -> str:
    """The last line of an error message, without a ``module.Class:`` prefix.

    DataLoader workers re-raise with the worker's whole traceback as the message; its last
    line is the original message.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    head, sep, tail = last.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum() and head.split(".")[-1][:1].isupper():
        return tail
    return last


def _print_metrics(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{record['task']}: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in record["metrics"].items():
        table.add_row(key, f"{value:.2f}")
    for key, value in record["throughput"].items():
        table.add_row(key, f"{value:.1f}")
    Console(stderr=False).print(table)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"carafe-exp: error: {one_line(user_error)}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console-script entry point (``carafe-exp``)."""
    configure_cpu_allocator()  # before the first large tensor: see carafe_exp.allocator
    _hydra_entry()


if __name__ == "__main__":
    main()

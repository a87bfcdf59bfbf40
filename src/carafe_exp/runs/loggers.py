"""The run's loggers (``conf/logger/``): CSV, TensorBoard and Weights & Biases, set up for dashboards.

W&B:
- Online or offline is decided without starting a W&B session (asking ``wandb`` for the API key
  starts one, and fails before offline mode is set when nobody is logged in): an explicit
  ``logger.wandb.offline`` wins, then ``WANDB_MODE`` (``offline``/``dryrun``, ``disabled``,
  ``online``), then credentials as W&B itself finds them (``WANDB_API_KEY``,
  ``WANDB_IDENTITY_TOKEN_FILE``, an entry for the W&B host in ``~/.netrc`` or ``$NETRC``);
  without any, the run is offline and ``wandb sync <run dir>/wandb/offline-run-*`` uploads it later.
- Every run sends its whole config flattened (``upsampler.k_up``, ``model.sites.fpn``, ...) plus
  the config-group choices (``choice.model``), and tags ``task:``, ``model:``, ``upsampler:``,
  ``downsampler:``, ``experiment:`` and ``row:`` (a paper table and its row) where they apply, so
  runs group and filter by any of them.
- All jobs of one sweep share a W&B group, :func:`sweep_group` of the sweep directory (its name),
  which ``metrics.json`` records (``wandb.group``) for tools that add to the same group later.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("carafe_exp")

DEFAULT_WANDB_HOST = "https://api.wandb.ai"
_OFFLINE_MODES = ("offline", "dryrun")
_ONLINE_MODES = ("online", "run")


def wandb_credentials_available() -> bool:
    """Whether W&B would find credentials, looked up the way W&B does but without importing or starting it."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    candidates = [Path(os.environ["NETRC"]).expanduser()] if os.environ.get("NETRC") else \
        [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    host = urlsplit(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)).netloc
    for path in candidates:
        if not path.is_file():
            continue
        try:
            entry = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            return False
        return bool(entry and entry[2])
    return False


def wandb_mode(offline: bool | None) -> str:
    """``"online"``, ``"offline"`` or ``"disabled"`` for a W&B run, decided without a W&B session."""
    if offline is not None:
        return "offline" if offline else "online"
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in _OFFLINE_MODES:
        return "offline"
    if env_mode == "disabled":
        return "disabled"
    if env_mode in _ONLINE_MODES:
        return "online"
    return "online" if wandb_credentials_available() else "offline"


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (W&B shows them as such)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_tags(description: Mapping[str, Any], choices: Mapping[str, Any]) -> list[str]:
    """Tags of a run: ``task:``, ``model:``, the ``upsampler:``/``downsampler:`` the model uses, ``data:``,
    and ``experiment:``/``row:`` (a paper table and its row) where set.

    ``description`` is :func:`carafe_exp.runs.name.model_description` of the run.
    """
    values = {"task": description.get("task"), "model": description.get("model"),
              "upsampler": description.get("upsampler"), "downsampler": description.get("downsampler"),
              "data": choices.get("data"), "experiment": choices.get("experiment"), "row": choices.get("row")}
    tags = [f"{key}:{value}" for key, value in values.items() if value not in (None, "", "null")]
    return [tag[:64] for tag in tags]  # W&B's limit per tag


def sweep_group(sweep_dir: str | os.PathLike[str]) -> str:
    """The W&B group of every job of the sweep in ``sweep_dir``: the directory's name.

    The default sweep directory ends in a time stamp with microseconds, so two sweeps never share
    a group; ``carafe-tables --wandb`` finds the same group from a job's directory.
    """
    return Path(sweep_dir).resolve().name


def _hydra_context() -> tuple[dict[str, Any], str | None]:
    """The config-group choices of the running job and its sweep directory (None outside a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}, None
    hydra_cfg = HydraConfig.get()
    choices = {str(k): v for k, v in OmegaConf.to_container(hydra_cfg.runtime.choices).items()}
    sweep_dir = str(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    return choices, sweep_dir


def _wandb_logger(node: DictConfig, cfg: DictConfig, run_name: str, description: Mapping[str, Any]) -> Any | None:
    settings = OmegaConf.to_container(node, resolve=True)
    assert isinstance(settings, dict)
    mode = wandb_mode(settings.pop("offline", None))
    if mode == "disabled":
        log.info("W&B is disabled (WANDB_MODE=disabled): no W&B run")
        return None
    choices, sweep_dir = _hydra_context()
    if settings.get("group") is None and sweep_dir is not None:
        settings["group"] = sweep_group(sweep_dir)
    if settings.get("name") is None:
        settings["name"] = run_name
    config = flatten_config(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    config.update({f"choice.{group}": value for group, value in choices.items() if not group.startswith("hydra")})
    tags = list(settings.pop("tags", None) or []) + run_tags(description, choices)
    Path(settings.get("save_dir") or ".").mkdir(parents=True, exist_ok=True)
    # The mode goes to wandb.init; Lightning's own ``offline`` flag would set WANDB_MODE for the
    # whole process, leaking into the next job of a sweep.
    settings.update(offline=False, mode=mode, config=config, tags=tags)
    if mode == "offline":
        log.info("W&B runs offline (no credentials found, or WANDB_MODE=offline): upload later with "
                 "`wandb sync %s/wandb/offline-run-*`", settings.get("save_dir"))
    # Built directly, not through instantiate: the flattened config must reach W&B as plain values.
    logger_class = get_class(str(settings.pop("_target_")))
    return logger_class(**settings)


def build_loggers(cfg: DictConfig, run_name: str, description: Mapping[str, Any]) -> list[Any]:
    """Lightning loggers of every ``logger.<name>`` node with a ``_target_``.

    ``run_name`` names the W&B run; ``description`` (:func:`carafe_exp.runs.name.model_description`) tags it.
    """
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        logger = _wandb_logger(node, cfg, run_name, description) if name == "wandb" else instantiate(node)
        if logger is not None:
            loggers.append(logger)
    return loggers


def wandb_summary(loggers: list[Any]) -> dict[str, Any] | None:
    """``{"project", "group", "id", "mode", "dir"}`` of the run's W&B logger, for metrics.json."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            init = getattr(logger, "_wandb_init", {})
            experiment = getattr(logger, "_experiment", None)
            return {"project": init.get("project"), "group": init.get("group"),
                    "id": getattr(experiment, "id", None) or init.get("id"), "mode": init.get("mode"),
                    "dir": init.get("dir")}
    return None


def finish_loggers(loggers: list[Any]) -> None:
    """Close the W&B run so the next job of a sweep starts its own."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()

"""The jobs a sweep would launch, without launching them: ``carafe-exp -m <overrides>`` as a list of job configs.

Hydra's ``--cfg job`` cannot be combined with ``-m``; this expands a sweep the way Hydra's basic
sweeper does (an experiment's ``hydra.sweeper.params`` first, the command line's overrides after
and winning per key, then the cartesian product) and composes each job's config. Tests use it to
check a paper table's rows and the README's sweep commands; :func:`check_sweep` also applies the
run loop's configuration checks to every job (the ones that need this machine's devices aside).
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from carafe_exp.paths import config_dir
from carafe_exp.runs.preflight import check_composition


def compose_job(overrides: Sequence[str], multirun: bool = False) -> DictConfig:
    """The config a job with ``overrides`` gets (Hydra node included), with HydraConfig set as in a run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    if multirun:
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve as in a run
    return cfg


def without_hydra(cfg: DictConfig) -> DictConfig:
    """The job's own config, as the task function receives it (no ``hydra`` node)."""
    task_cfg = cfg.copy()
    with open_dict(task_cfg):
        task_cfg.pop("hydra", None)
    return task_cfg


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The override list of every job ``carafe-exp -m <overrides>`` launches, in launch order."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line]
    base = compose_job(fixed)
    params = OmegaConf.select(base, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(overrides)
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def check_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Compose every job of the sweep and run the configuration checks on it; return the job list.

    A job that cannot work raises the ``ConfigError`` the run would print.
    """
    jobs = sweep_jobs(overrides)
    for job in jobs:
        cfg = compose_job(job, multirun=True)
        launcher = OmegaConf.select(cfg, "hydra.runtime.choices", default={}).get("hydra/launcher", "basic")
        check_composition(without_hydra(cfg), multirun=True, launcher=str(launcher))
    return jobs

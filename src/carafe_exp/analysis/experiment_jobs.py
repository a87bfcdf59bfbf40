"""What a paper table's experiment runs: its sweep's jobs and each row's composed setting.

``carafe-exp -m experiment=<table>`` expands ``hydra.sweeper.params`` of the experiment config
into jobs exactly as Hydra's basic sweeper does; :func:`sweep_jobs` does the same without
running anything. :func:`row_setting` composes one row's config, and :func:`identity_keys`
names the settings a run must share with a row to count as that row: the task, the model
(its builder, sites, backbone depth and DCN), the upsampler and downsampler, and every key the
table's rows set differently. Other settings (schedule, pretrained weights, input scale) are
reported as differences, not used to reject a run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from carafe_exp.sweeps import plan as sweep_plan
from carafe_exp.paths import config_dir

# Config nodes a row's setting is read from (the rest, data and trainer, belong to where it runs).
SETTING_NODES = ("task", "model", "upsampler", "downsampler", "schedule")
# Model keys that decide which network a run trained; other model keys are reported differences.
MODEL_IDENTITY = ("model._target_", "model.backbone.depth", "model.backbone.dcn")
MODEL_IDENTITY_PREFIXES = ("model.sites.",)
ALWAYS_IDENTITY_PREFIXES = ("upsampler.", "downsampler.")


@contextmanager
def _hydra() -> Iterator[None]:
    """Compose with the package's config tree, leaving no global Hydra state behind."""
    previous = GlobalHydra.instance().is_initialized()
    if previous:
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()


def compose_experiment(experiment: str, overrides: Sequence[str] = (), hydra_config: bool = False) -> DictConfig:
    """The config of ``carafe-exp experiment=<experiment> <overrides>`` (Hydra compose, nothing run)."""
    with _hydra():
        return compose(config_name="config", overrides=[f"experiment={experiment}", *overrides],
                       return_hydra_config=hydra_config)


def sweep_jobs(experiment: str, overrides: Sequence[str] = ()) -> list[list[str]]:
    """The jobs of ``carafe-exp -m experiment=<experiment> <overrides>``: each job's sweep overrides.

    Expanded by :func:`carafe_exp.sweeps.plan.sweep_jobs`, as Hydra's basic sweeper does; the
    ``experiment=`` override itself is left out of each job.
    """
    selection = f"experiment={experiment}"
    return [[override for override in job if override != selection]
            for job in sweep_plan.sweep_jobs([selection, *overrides])]


def job_values(job: Sequence[str]) -> dict[str, Any]:
    """``["upsampler.c_m=null", "+row=a/b"]`` → ``{"upsampler.c_m": None, "+row": "a/b"}`` (Hydra's parser)."""
    parsed = OverridesParser.create().parse_overrides(list(job))
    return {override.get_key_element(): override.value() for override in parsed}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}`` (lists and scalars are leaves)."""
    if isinstance(node, Mapping):
        items: dict[str, Any] = {}
        for key, value in node.items():
            items.update(flatten(value, f"{prefix}{key}."))
        if not node and prefix:
            items[prefix[:-1]] = {}
        return items
    return {prefix[:-1]: node}


@dataclass(frozen=True)
class RowSetting:
    """One row's composed setting: resolved leaves, and which leaves are interpolations of other nodes."""

    values: dict[str, Any]
    derived: frozenset[str]


def setting_of(cfg: DictConfig) -> RowSetting:
    """The leaves of :data:`SETTING_NODES` in ``cfg`` (``task`` without its data kinds)."""
    values: dict[str, Any] = {}
    derived: set[str] = set()
    for node_name in SETTING_NODES:
        node = cfg.get(node_name)
        if node is None:
            continue
        raw = flatten(OmegaConf.to_container(node, resolve=False), f"{node_name}.")
        resolved = flatten(OmegaConf.to_container(node, resolve=True), f"{node_name}.")
        values.update(resolved)
        derived.update(key for key, value in raw.items() if isinstance(value, str) and "${" in value)
    return RowSetting(values, frozenset(derived))


def row_setting(experiment: str, job: Sequence[str]) -> RowSetting:
    """The setting of the experiment's job ``job`` (its sweep overrides)."""
    return setting_of(compose_experiment(experiment, job))


def is_identity_key(key: str) -> bool:
    """Whether ``key`` decides which network and training a run is (see module docstring)."""
    return (key == "task.name" or key in MODEL_IDENTITY or key.startswith(MODEL_IDENTITY_PREFIXES)
            or key.startswith(ALWAYS_IDENTITY_PREFIXES))


def identity_keys(settings: Sequence[RowSetting]) -> set[str]:
    """Keys a run must match: the fixed identity keys, plus every key on which the rows differ."""
    keys = {key for setting in settings for key in setting.values if is_identity_key(key)}
    if len(settings) > 1:
        every = set().union(*(s.values for s in settings))
        for key in every:
            seen = {repr(s.values.get(key)) for s in settings}
            if len(seen) > 1 and not any(key in s.derived for s in settings):
                keys.add(key)
    return keys


__all__ = ["RowSetting", "compose_experiment", "flatten", "identity_keys", "is_identity_key", "job_values",
           "row_setting", "setting_of", "sweep_jobs"]

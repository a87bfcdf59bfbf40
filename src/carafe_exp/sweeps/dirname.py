"""Directory names of sweep jobs: what the sweep varies comes first, fixed overrides only while they fit.

A job's directory is ``<num>_<name>`` (``conf/hydra/default.yaml``). Hydra's own
``override_dirname`` sorts every override alphabetically, so in a sweep over ten upsamplers
with a few fixed settings the cut-off name showed only the fixed ones. Here the swept keys (a
command-line sweep such as ``upsampler=nearest,carafe``, or an experiment's
``hydra.sweeper.params``) are listed first, in the order given, then the fixed ones as long as the
name stays within the limit. Names never contain ``/`` (``data.root=/a/b`` must not nest
directories) and stay far below the file systems' 255-byte limit; the job number keeps them unique.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Sequence

from omegaconf import OmegaConf

DIRNAME_LIMIT = 120
# Set by the ``carafe-exp`` entry point from its command line; inherited by every job process
# (in-process basic launcher, submitit's local and SLURM workers alike).
SWEPT_KEYS_ENV = "CARAFE_EXP_SWEPT_KEYS"


def override_key(override: str) -> str:
    """The config key of a command-line override: ``+row=a`` -> ``row``, ``upsampler.k_up=3`` -> ``upsampler.k_up``."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def _cut(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:limit - len(digest) - 1]}~{digest}"


def short_dirname(overrides: str, limit: int = DIRNAME_LIMIT) -> str:
    """A flat name from an override string: slashes replaced, long names cut and given a hash of the whole."""
    return _cut(overrides.replace("/", "_") or "defaults", limit)


def job_dirname(overrides: Sequence[str], swept_keys: Sequence[str], exclude_keys: Collection[str] = (),
                limit: int = DIRNAME_LIMIT) -> str:
    """A job's directory name: swept overrides first (in ``swept_keys`` order), then fixed ones while they fit."""
    # Hydra escapes the colon of a ``module:Class`` resampler in the job's overrides (``a\\:B``); the
    # directory shows the name the user typed.
    items = [o.replace("/", "_").replace("\\:", ":") for o in overrides if override_key(o) not in exclude_keys]
    order = {key: index for index, key in enumerate(swept_keys)}
    swept = sorted((o for o in items if override_key(o) in order), key=lambda o: order[override_key(o)])
    fixed = sorted(o for o in items if override_key(o) not in order)
    if not swept:
        return short_dirname(",".join(fixed), limit)
    name = ",".join(swept)
    if len(name) > limit:
        return _cut(name, limit)
    for item in fixed:
        if len(name) + 1 + len(item) <= limit:
            name = f"{name},{item}"
    return name


def swept_keys_of(arguments: Sequence[str]) -> list[str]:
    """Keys of the sweep overrides among command-line ``arguments`` (``a=1,2``, ``b=range(3)``, ``c=glob(*)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(arguments))
    except Exception:  # Hydra reports malformed overrides itself, with its own message.
        return []
    return [override_key(o.input_line or "") for o in parsed if o.is_sweep_override()]


def current_swept_keys() -> list[str]:
    """Keys the running sweep varies: the experiment's ``hydra.sweeper.params``, then the command line's sweeps."""
    from hydra.core.hydra_config import HydraConfig

    params = OmegaConf.select(HydraConfig.get(), "sweeper.params", default=None) or {}
    swept = [override_key(str(k)) for k in params]
    return swept + [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k and k not in swept]


def current_swept_overrides() -> list[str]:
    """The running sweep job's overrides of the swept keys, in sweep order (empty outside a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    order = {key: index for index, key in enumerate(current_swept_keys())}
    swept = [o for o in HydraConfig.get().overrides.task if override_key(o) in order]
    return sorted(swept, key=lambda o: order[override_key(o)])


def _current_job_dirname() -> str:
    """Resolver ``${job_dirname:}``: the running job's directory name, from the Hydra config of the job."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    exclude = list(OmegaConf.select(hydra_cfg, "job.config.override_dirname.exclude_keys", default=[]) or [])
    return job_dirname(list(hydra_cfg.overrides.task), current_swept_keys(), exclude)


# Registered at import, so every process that resolves a job's directory (the launcher, a DDP
# worker, a submitit job) has it; ``short_dirname`` stays for configs written against it.
OmegaConf.register_new_resolver("job_dirname", _current_job_dirname, replace=True)
OmegaConf.register_new_resolver("short_dirname", short_dirname, replace=True)

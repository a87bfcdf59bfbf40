"""Find the checkpoint behind ``model.backbone.weights=<run or sweep directory>``.

The CARAFE++ tables start detection and segmentation from a backbone pretrained on ImageNet
*with its downsamplers in place* (CARAFE++ §5.2, Tables I, III, V, VII, VIII, IX). A user runs
the classification sweep once and hands its directory to the downstream sweep:

    carafe-exp -m task=classification model.sites.backbone=true downsampler=conv,maxpool,carafe ...
    carafe-exp -m experiment=carafe_pp/table3 model.backbone.weights=<that sweep directory>

- A **run directory** (it has ``checkpoints/last.ckpt``) gives that checkpoint. Its configuration
  (``.hydra/config.yaml`` or ``metrics.json``) must describe the same backbone as the model being
  built, unless ``strict=False``.
- A **sweep directory** (its job directories hold run directories) gives the checkpoint of the
  one job whose backbone setting matches: same depth, same downsampler at the backbone site
  (name and every parameter), or no downsampler on both sides (site off, or ``conv``, the
  original network). None or several matching is an error that lists the candidates.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from carafe_exp.errors import ConfigError
from carafe_exp.resample import DOWNSAMPLERS, ORIGINAL_DOWNSAMPLER
from carafe_exp.resample.registry import split_spec

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.ckpt"
_RUN_CONFIGS = (Path(".hydra") / "config.yaml", Path("metrics.json"))
# Build-time options of a resampler that do not change its tensors or what it computes.
_NOT_PART_OF_THE_SETTING = frozenset({"backend"})


def canonical_downsampler(spec: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The downsampler a backbone site really gets: name and every parameter (defaults filled in).

    None for no downsampler or the original strided convolution (``conv``).
    """
    if spec is None:
        return None
    name, params = split_spec(spec)
    if name == ORIGINAL_DOWNSAMPLER:
        return None
    cls = DOWNSAMPLERS.get(name)
    full: dict[str, Any] = {}
    if cls is not None:
        for parameter in list(inspect.signature(cls.__init__).parameters.values())[3:]:
            if parameter.default is not inspect.Parameter.empty:
                full[parameter.name] = parameter.default
    full.update(params)
    return {"name": name, **{k: v for k, v in sorted(full.items()) if k not in _NOT_PART_OF_THE_SETTING}}


@dataclass(frozen=True)
class BackboneSetting:
    """What must agree between a pretrained backbone and the model it is loaded into."""

    depth: int
    downsampler: dict[str, Any] | None

    @classmethod
    def of(cls, depth: int, downsampler: str | Mapping[str, Any] | None) -> BackboneSetting:
        return cls(int(depth), canonical_downsampler(downsampler))

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> BackboneSetting:
        """The backbone of a run from its composed config.

        Reads ``model.backbone.depth``, ``model.sites.backbone`` and ``downsampler``.
        """
        model = config.get("model") or {}
        depth = int((model.get("backbone") or {}).get("depth", 50))
        site_on = bool((model.get("sites") or {}).get("backbone", False))
        return cls.of(depth, config.get("downsampler") if site_on else None)

    def describe(self) -> str:
        if self.downsampler is None:
            return f"ResNet-{self.depth} with its original downsampling"
        params = ", ".join(f"{k}={v}" for k, v in self.downsampler.items() if k != "name")
        return f"ResNet-{self.depth} with downsampler {self.downsampler['name']}({params})"


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The composed config of a run: Hydra's ``.hydra/config.yaml``, else ``metrics.json``'s ``config``."""
    hydra_file, metrics_file = (run_dir / name for name in _RUN_CONFIGS)
    try:
        if hydra_file.is_file():
            loaded = OmegaConf.to_container(OmegaConf.load(hydra_file), resolve=False)
            return loaded if isinstance(loaded, dict) else None
        if metrics_file.is_file():
            config = json.loads(metrics_file.read_text()).get("config")
            return config if isinstance(config, dict) else None
    except Exception as error:  # a damaged file: the caller reports the run as unreadable
        log.warning("cannot read the configuration of %s: %s", run_dir, error)
    return None


def _is_run(path: Path) -> bool:
    return (path / CHECKPOINT).is_file()


def _runs_of_sweep(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and _is_run(p))


def _run_checkpoint(run_dir: Path, wanted: BackboneSetting, strict: bool) -> Path:
    config = read_run_config(run_dir)
    if config is None:
        log.warning("%s has no readable configuration; its backbone is checked by tensor names only", run_dir)
    else:
        found = BackboneSetting.from_run_config(config)
        if found != wanted:
            message = (f"model.backbone.weights={run_dir} was trained as {found.describe()}, but this model is "
                       f"{wanted.describe()}")
            if strict:
                raise ConfigError(f"{message}; pick the run with the same backbone or set model.backbone.strict=false")
            log.warning("%s (model.backbone.strict=false: loading what fits)", message)
    return run_dir / CHECKPOINT


def _sweep_checkpoint(sweep_dir: Path, runs: list[Path], wanted: BackboneSetting) -> Path:
    settings = {run: read_run_config(run) for run in runs}
    candidates = {run: BackboneSetting.from_run_config(config) for run, config in settings.items()
                  if config is not None}
    matching = [run for run, setting in candidates.items() if setting == wanted]
    if len(matching) == 1:
        log.info("model.backbone.weights: %s is the run of sweep %s trained as %s", matching[0].name, sweep_dir,
                 wanted.describe())
        return matching[0] / CHECKPOINT
    listed = "; ".join(f"{run.name}: {setting.describe()}" for run, setting in candidates.items()) or "none readable"
    if not matching:
        raise ConfigError(f"model.backbone.weights={sweep_dir} is a sweep directory with no run trained as "
                          f"{wanted.describe()}; its runs: {listed}")
    raise ConfigError(f"model.backbone.weights={sweep_dir} has several runs trained as {wanted.describe()} "
                      f"({', '.join(r.name for r in matching)}); give one run directory")


def locate_checkpoint(directory: str | Path, wanted: BackboneSetting, strict: bool = True) -> Path:
    """The checkpoint file for ``wanted`` in a run directory or a sweep directory (see module docstring)."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"model.backbone.weights={directory} is not a directory")
    if _is_run(directory):
        return _run_checkpoint(directory, wanted, strict)
    runs = _runs_of_sweep(directory)
    if not runs:
        raise ConfigError(f"model.backbone.weights={directory} has no {CHECKPOINT} and no run directories with one; "
                          f"give a run directory of a run that saved checkpoints (callbacks=default), a sweep "
                          f"directory, or a checkpoint file")
    return _sweep_checkpoint(directory, runs, wanted)


__all__ = ["BackboneSetting", "CHECKPOINT", "canonical_downsampler", "locate_checkpoint", "read_run_config"]

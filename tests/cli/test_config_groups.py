"""Every option of every config group composes, and the objects it describes instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from carafe_exp.models.build import build_model
from carafe_exp.paths import config_dir
from carafe_exp.resample import DOWNSAMPLERS, UPSAMPLERS, build_downsampler, build_upsampler

CONF = config_dir()
GROUPS = ["task", "model", "data", "upsampler", "downsampler", "schedule", "trainer", "logger", "callbacks", "paths"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve as in a run
    return cfg


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize("option", options("upsampler"))
def test_upsampler_option_builds(option: str) -> None:
    cfg = compose_with([f"upsampler={option}"])
    spec = OmegaConf.to_container(cfg.upsampler)
    assert spec["name"] == option and option in UPSAMPLERS
    module = build_upsampler(spec, 32, 2, guide_available=True)  # 32: A2U's GroupNorm(32)
    assert module is not None


@pytest.mark.parametrize("option", options("downsampler"))
def test_downsampler_option_builds(option: str) -> None:
    cfg = compose_with([f"downsampler={option}"])
    spec = OmegaConf.to_container(cfg.downsampler)
    assert spec["name"] == option and option in DOWNSAMPLERS
    assert build_downsampler(spec, 16, 2) is not None


@pytest.mark.parametrize("option", options("task"))
def test_task_switches_model_and_data(option: str) -> None:
    cfg = compose_with([f"task={option}"])
    assert cfg.task.name == option
    assert "_target_" in cfg.task.module and "_target_" in cfg.model and "_target_" in cfg.data
    # A choice on the command line wins over the task's default.
    other = [m for m in options("model") if m != cfg.hydra.runtime.choices.model]
    if other:
        assert compose_with([f"task={option}", f"model={other[0]}"]).hydra.runtime.choices.model == other[0]


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_option_instantiates(option: str, tmp_path: Path) -> None:
    cfg = compose_with([f"trainer={option}", "trainer.accelerator=cpu", f"trainer.default_root_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.schedule.max_epochs


@pytest.mark.parametrize("option", options("logger"))
def test_logger_option_instantiates(option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_with([f"logger={option}", f"hydra.run.dir={tmp_path}"])
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path), force_add=True)
    for node in cfg.logger.values():
        logger = instantiate(node, **({"offline": True} if "Wandb" in node._target_ else {}))
        assert logger is not None


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_option_instantiates(option: str, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from carafe_exp.runs.loop import build_callbacks

    cfg = compose_with([f"callbacks={option}"])
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path), force_add=True)
    callbacks = build_callbacks(cfg)
    checkpoints = [type(cb).__name__ for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    # last.ckpt by default, best.ckpt only when asked, nothing at all with callbacks=none.
    assert checkpoints == {"default": ["LastCheckpoint"], "none": []}.get(option, checkpoints)
    if option == "default":
        OmegaConf.update(cfg, "callbacks.best_checkpoint.enabled", True)
        assert [type(cb).__name__ for cb in build_callbacks(cfg) if isinstance(cb, ModelCheckpoint)] == \
            ["LastCheckpoint", "BestCheckpoint"]


@pytest.mark.parametrize("option", options("schedule"))
def test_schedule_option_composes(option: str) -> None:
    cfg = compose_with([f"schedule={option}"])
    assert cfg.schedule.max_epochs >= 1
    assert cfg.schedule.policy in ("step", "poly", "cosine", "constant")


@pytest.mark.parametrize("option", options("data"))
def test_data_option_instantiates(option: str, sample_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARAFE_EXP_CACHE", str(sample_cache))
    cfg = compose_with([f"data={option}"])
    if cfg.data.get("sample") is None:
        # A real-data option: point it at the matching generated sample, which has the real layout.
        sample_option = f"{option}_sample"
        assert sample_option in options("data"), f"data={option} has no {sample_option} to test with"
        sample_cfg = compose_with([f"data={sample_option}"])
        _instantiate_data(sample_cfg)  # writes the sample
        OmegaConf.update(cfg, "data.root", sample_cfg.data.root)
    datamodule = _instantiate_data(cfg)
    if getattr(datamodule, "num_classes", None) is not None:  # inpainting data has no classes
        assert datamodule.num_classes >= 1
    # Every data option says what it is, for the task's data check (task.data_kinds).
    assert cfg.data.get("kind"), f"data={option} has no kind"


def _instantiate_data(cfg):
    """The data module as the run loop builds it: ``kind`` describes the data and is no argument."""
    from carafe_exp.runs.loop import node_arguments

    return instantiate(node_arguments(cfg.data, "kind"))


@pytest.mark.parametrize("option", options("task"))
def test_task_lists_the_data_kinds_it_reads(option: str) -> None:
    cfg = compose_with([f"task={option}"])
    assert cfg.data.kind in cfg.task.data_kinds  # a task's default data is data it can read


def test_model_option_instantiates() -> None:
    import inspect

    from hydra.utils import get_method

    for option in options("model"):
        cfg = compose_with([f"model={option}"])
        # As the CLI does: num_classes only for models of data with classes (inpainting has none).
        takes_classes = "num_classes" in inspect.signature(get_method(cfg.model._target_)).parameters
        model = build_model(cfg.model, upsampler=cfg.upsampler, downsampler=cfg.downsampler,
                            **({"num_classes": 3} if takes_classes else {}))
        assert sum(p.numel() for p in model.parameters()) > 0


def test_slurm_launcher_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_with(["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=4"])
    assert cfg.hydra.launcher.tasks_per_node == 4 and cfg.hydra.launcher.gpus_per_node == 4
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    # The launcher really is instantiable from the shipped config.
    from hydra.utils import instantiate as make

    launcher_cls = make({"_target_": "hydra.utils.get_class", "path": cfg.hydra.launcher._target_})
    assert launcher_cls.__name__ == "SlurmLauncher"


EXPERIMENTS = sorted(str(p.relative_to(CONF / "experiment").with_suffix(""))
                     for p in (CONF / "experiment").rglob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_its_sweep(experiment: str) -> None:
    cfg = compose_with([f"experiment={experiment}"])
    assert cfg.hydra.runtime.choices.task == cfg.task.name
    # Every swept config-group option exists (the tables' own tests check the rows themselves).
    for key, values in cfg.hydra.sweeper.params.items():
        group = str(key).lstrip("+")
        if (CONF / group).is_dir():
            for option in str(values).split(","):
                assert (CONF / group / f"{option.strip()}.yaml").is_file(), f"{key}={option}"
    # A user's own choice on the command line still wins over the experiment's.
    assert compose_with([f"experiment={experiment}", "schedule=demo"]).schedule.max_epochs == \
        compose_with(["schedule=demo"]).schedule.max_epochs

"""Checks of a composed config before anything is built: each problem is one ``ConfigError`` line.

Split in two so a dry check can run where the hardware differs: :func:`check_composition` needs
only the config (and, in a sweep, the launcher), :func:`check_hardware` looks at the devices of
this machine.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from carafe_exp.errors import ConfigError

# Lightning accelerators that need a CUDA device.
_CUDA_ACCELERATORS = ("gpu", "cuda")


def _choice(group: str) -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return OmegaConf.select(HydraConfig.get(), f"runtime.choices.{group}", default=None)


def check_missing_values(cfg: DictConfig) -> None:
    """Mandatory values (``???``) left unset, e.g. ``data=coco`` without ``data.root``."""
    missing = sorted(key for key in OmegaConf.missing_keys(cfg) if not str(key).startswith("hydra."))
    if not missing:
        return
    first = missing[0]
    group = first.split(".", 1)[0]
    choice = _choice(group)
    where = f" (with {group}={choice})" if choice else ""
    more = f"; also unset: {', '.join(missing[1:])}" if len(missing) > 1 else ""
    hint = " (the dataset directory: see the README's 'Real data' section for the layout)" if first == "data.root" \
        else ""
    raise ConfigError(f"{first} is required{where}: give {first}=<value> on the command line{hint}{more}")


def check_data_kind(cfg: DictConfig) -> None:
    """The task accepts the data: ``task.data_kinds`` must list ``data.kind``."""
    kinds = OmegaConf.select(cfg, "task.data_kinds", default=None)
    kind = OmegaConf.select(cfg, "data.kind", default=None)
    if kinds is None or kind is None:
        return
    kinds = [str(k) for k in kinds]
    if str(kind) not in kinds:
        task = OmegaConf.select(cfg, "task.name", default=_choice("task"))
        data = _choice("data") or kind
        raise ConfigError(f"task={task} cannot use data={data} ({kind} data): it needs {' or '.join(kinds)} data, "
                          f"e.g. data={kinds[0]}_sample or data={kinds[0]} data.root=<dir>")


def _device_count(devices: Any) -> int | None:
    """Devices a trainer setting asks for, or None when it depends on the machine (``auto``, ``-1``, a list)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, str):
        text = devices.strip()
        if text.isdigit():
            return int(text)
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        return None
    try:
        return len(devices)
    except TypeError:
        return None


def _visible_devices(accelerator: str) -> int:
    import torch

    if accelerator in _CUDA_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count()
    return 1  # Lightning's "auto" on CPU is one process


# Public names for the run's setting check (carafe_exp.runs.setting_differences).
device_count = _device_count
visible_devices = _visible_devices


def check_launch(cfg: DictConfig, multirun: bool, launcher: str) -> None:
    """A local sweep runs each job in this process, which cannot start DDP worker processes."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if not (multirun and launcher == "basic" and strategy.startswith("ddp")):
        return
    devices = cfg.trainer.get("devices", 1)
    count = _device_count(devices)
    if count is None:
        count = _visible_devices(str(cfg.trainer.get("accelerator", "auto")))
    processes = count * int(cfg.trainer.get("num_nodes", 1) or 1)
    if processes > 1:
        raise ConfigError(
            f"trainer.strategy={strategy} with {processes} processes (trainer.devices={devices}) cannot run in a local "
            "sweep, which runs each job as one process: sweep with one device per job (trainer=gpu), or with "
            "hydra/launcher=submitit_slurm (one SLURM task per GPU)")


def check_gradient_clipping(cfg: DictConfig) -> None:
    """Lightning clips gradients itself only under automatic optimisation.

    A task that steps its optimisers by hand (``task.manual_optimization``, the GAN of inpainting)
    would make Lightning refuse ``trainer.gradient_clip_val`` deep inside ``fit``.
    """
    if OmegaConf.select(cfg, "task.manual_optimization", default=False) \
            and OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None) is not None:
        task = OmegaConf.select(cfg, "task.name", default=_choice("task"))
        raise ConfigError(f"trainer.gradient_clip_val cannot be used with task={task}: it steps its optimisers by "
                          "hand (Lightning's manual optimisation), which Lightning's clipping does not serve; "
                          "leave trainer.gradient_clip_val=null")


def check_optimization(cfg: DictConfig) -> None:
    """Optimiser and lr-policy names, which would otherwise fail only once model and data are built."""
    from carafe_exp.tasks.optim import LR_POLICIES, OPTIMIZERS, check_warmup

    policy = OmegaConf.select(cfg, "schedule.policy", default=None)
    if policy is not None and str(policy) not in LR_POLICIES:
        raise ConfigError(f"schedule.policy={policy}: unknown lr policy; available: {', '.join(LR_POLICIES)}")
    check_warmup(OmegaConf.select(cfg, "schedule", default=None) or {})
    for key in ("optimizer", "discriminator_optimizer"):
        name = OmegaConf.select(cfg, f"task.module.{key}.name", default=None)
        if name is not None and str(name).lower() not in OPTIMIZERS:
            raise ConfigError(f"task.module.{key}.name={name}: unknown optimizer; available: {', '.join(OPTIMIZERS)}")


# Whole-number settings and their smallest valid value (None: any integer). The libraries that read
# them (torch's DataLoader, the lr scaling, Lightning's loops) reject them only once model and data
# are built, with a traceback; a null value means "not used" and is left to its reader.
_WHOLE_NUMBERS: dict[str, int | None] = {
    "seed": None,
    "data.batch_size": 1,
    "data.test_batch_size": 1,
    "data.num_workers": 0,
    "trainer.accumulate_grad_batches": 1,
}


def check_whole_numbers(cfg: DictConfig) -> None:
    """Batch sizes, worker counts, gradient accumulation and the seed are integers in range."""
    for key, minimum in _WHOLE_NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value}: expected a whole number" + (f" >= {minimum}" if minimum is not None
                                                                             else ""))
        if minimum is not None and value < minimum:
            raise ConfigError(f"{key}={value}: expected a whole number >= {minimum}")


def check_run_length(cfg: DictConfig) -> None:
    """A training run has an end: Lightning reads max_epochs=-1 without max_steps as "train forever",
    and every learning-rate schedule here is laid out over the run's length."""
    if not OmegaConf.select(cfg, "train", default=True) or OmegaConf.select(cfg, "trainer.fast_dev_run", default=False):
        return
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    if max_epochs == -1 and max_steps in (None, -1):
        raise ConfigError(f"the trainer settings (trainer.*, schedule.max_epochs/max_steps) give the run no end "
                          f"(max_epochs={max_epochs}, max_steps={max_steps}): the learning-rate schedule needs a "
                          f"finite length; set schedule.max_epochs or schedule.max_steps")


def check_pretrained_weights(cfg: DictConfig) -> None:
    """A table that starts from a pretraining run's weights has them on the command line (runs.pretrained_chain)."""
    from hydra.core.hydra_config import HydraConfig

    from carafe_exp.runs.pretrained_chain import check_pretrained_chain

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    check_pretrained_chain(cfg, overrides, _choice("experiment"))


def check_composition(cfg: DictConfig, multirun: bool = False, launcher: str = "basic") -> None:
    """Everything that can be checked from the config alone."""
    check_pretrained_weights(cfg)
    check_missing_values(cfg)
    check_whole_numbers(cfg)
    check_run_length(cfg)
    check_data_kind(cfg)
    check_gradient_clipping(cfg)
    check_optimization(cfg)
    check_launch(cfg, multirun, launcher)


def check_hardware(cfg: DictConfig) -> None:
    """The devices the trainer asks for exist on this machine (``trainer=gpu`` without a GPU)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator not in _CUDA_ACCELERATORS:
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} needs a CUDA GPU, but none is visible "
                          "(torch.cuda.is_available() is False): run on the CPU with trainer=cpu")
    wanted = _device_count(cfg.trainer.get("devices", 1))
    if wanted is not None and wanted > available:
        raise ConfigError(f"trainer.devices={wanted} but only {available} CUDA GPU(s) are visible: "
                          f"give trainer.devices={available} or fewer")


def check_config(cfg: DictConfig) -> None:
    """Every check, against the running Hydra job (sweep mode, launcher) and this machine."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    launcher = (_choice("hydra/launcher") or "basic") if HydraConfig.initialized() else "basic"
    check_composition(cfg, multirun=bool(multirun), launcher=launcher)
    check_hardware(cfg)

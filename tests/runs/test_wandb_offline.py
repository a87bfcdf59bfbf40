"""W&B with no account and no network: runs go offline, carry the whole config, tags and the sweep's group.

``logger=wandb`` crashed without credentials (``No API key configured``, exit 1): asking wandb
for the API key started its session before offline mode was set. The offline run files are
read back to check what W&B would show once synced (``wandb sync``).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import TINY_CLASSIFICATION, run_cli

ONE_BATCH = ["schedule.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1"]


def no_credentials_env(base: dict[str, str], home: Path) -> dict[str, str]:
    """No API key, no netrc, no W&B settings, WANDB_MODE unset, and a W&B host that cannot be reached."""
    env = {k: v for k, v in base.items() if not k.startswith("WANDB_") and k not in ("NETRC", "XDG_CONFIG_HOME")}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["WANDB_BASE_URL"] = "http://127.0.0.1:9"  # any attempt to go online fails at once
    return env


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of a ``.wandb`` file (W&B's LevelDB-style log: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, header, position, pending = 32768, 7, 7, b""
    while position + header <= len(data):
        room = block - position % block
        if room < header:
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + header])
        chunk = data[position + header:position + header + length]
        position += header + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):
            pending += chunk


def test_offline_sweep_logs_config_tags_group_and_paper_metric_names(cli_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    from carafe_exp.runs.loggers import sweep_group

    sweep = tmp_path / "sweep"
    run_cli(["-m", *TINY_CLASSIFICATION, *ONE_BATCH, "logger=wandb", "seed=1,2", f"hydra.sweep.dir={sweep}"],
            no_credentials_env(cli_env, tmp_path / "home"))
    job_dirs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(job_dirs) == 2
    groups = set()
    for job_dir in job_dirs:
        record = json.loads((job_dir / "metrics.json").read_text())
        assert record["wandb"]["mode"] == "offline"
        files = list(job_dir.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, list(job_dir.rglob("*"))
        records = list(wandb_records(files[0]))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        groups.add(run.run_group)
        assert run.run_group == record["wandb"]["group"]
        assert {"task:classification", "model:resnet", "downsampler:conv", "data:imagenet_sample"} <= set(run.tags)
        assert not any(tag.startswith("upsampler:") for tag in run.tags)  # a classifier has no upsampling site
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert config["model.backbone.depth"] == 18 and config["choice.task"] == "classification"
        assert config["seed"] == record["config"]["seed"] and config["data.batch_size"] == 8
        logged = {item.key or "/".join(item.nested_key) for r in records if r.WhichOneof("record_type") == "history"
                  for item in r.history.item}
        assert {"val/top1", "test/top1", "test/top5", "test/fps"} <= logged, logged
        assert run.display_name == record["name"] and record["name"].startswith("classification-resnet-conv[seed=")
    assert groups == {sweep_group(sweep)}  # all jobs of the sweep, one group


def _mode_in_fresh_process(env: dict[str, str]) -> tuple[str, bool]:
    code = ("import sys; from carafe_exp.runs.loggers import wandb_mode; "
            "print(wandb_mode(None), 'wandb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    mode, imported = out.split()
    return mode, imported == "True"


def test_mode_is_decided_without_starting_wandb(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = no_credentials_env(cli_env, tmp_path / "home")
    assert _mode_in_fresh_process(env) == ("offline", False)  # wandb is not even imported
    assert _mode_in_fresh_process(env | {"WANDB_MODE": "disabled"}) == ("disabled", False)
    assert _mode_in_fresh_process(env | {"WANDB_MODE": "online"}) == ("online", False)
    assert _mode_in_fresh_process(env | {"WANDB_API_KEY": "x" * 40}) == ("online", False)
    assert _mode_in_fresh_process(env | {"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}) == ("offline", False)
    (tmp_path / "home" / ".netrc").write_text("machine 127.0.0.1:9\n  login user\n  password " + "k" * 40 + "\n")
    assert _mode_in_fresh_process(env) == ("online", False)  # what `wandb login` leaves behind


def test_wandb_mode_disabled_gives_no_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from carafe_exp.runs.loggers import build_loggers
    from carafe_exp.paths import config_dir

    monkeypatch.setenv("WANDB_MODE", "disabled")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=wandb", f"hydra.run.dir={tmp_path}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path), force_add=True)
    with open_dict(cfg):
        del cfg["hydra"]
    loggers = build_loggers(cfg, "name", {"task": "detection"})
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger"]
    assert os.environ["WANDB_MODE"] == "disabled"

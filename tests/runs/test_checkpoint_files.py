"""What a run leaves on disk: one last.ckpt, best.ckpt only when asked, nothing with callbacks=none.

A detection run wrote two 331 MB checkpoints (a one-batch 10-job smoke sweep: 6.8 GB), and
``callbacks=none`` still wrote both, through Lightning's own default checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import TINY_CLASSIFICATION, run_cli

TWO_EPOCHS = [*TINY_CLASSIFICATION, "schedule.max_epochs=2", "logger=none"]


def test_best_checkpoint_only_when_asked(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_cli([*TWO_EPOCHS, "callbacks.best_checkpoint.enabled=true", f"hydra.run.dir={tmp_path}"], cli_env)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and best["epoch"] in (0, 1)
    # best.ckpt is the epoch with the highest val/top1 (task.monitor), as its own record says.
    scores = [state["best_model_score"] for key, state in best["callbacks"].items() if key.startswith("BestCheckpoint")]
    assert len(scores) == 1 and scores[0] is not None


def test_callbacks_none_writes_no_checkpoint(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli([*TWO_EPOCHS, "callbacks=none", f"hydra.run.dir={tmp_path}"], cli_env)
    assert not list(tmp_path.rglob("*.ckpt")), sorted(str(p) for p in tmp_path.rglob("*"))
    assert (tmp_path / "metrics.json").is_file()
    assert "] epoch " not in result.stdout  # no progress output either: none means none

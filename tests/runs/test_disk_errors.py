"""A checkpoint that cannot be written is one line naming the path and the bytes needed; the previous last.ckpt stays valid.

The write error is real: the resumed run's process gets a file-size limit (``RLIMIT_FSIZE``)
below a checkpoint's size, so the kernel refuses the write as a full disk or quota would.
"""

from __future__ import annotations

import hashlib
import resource
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import CLI, REPO, TINY_CLASSIFICATION, run_cli

RUN = [*TINY_CLASSIFICATION, "logger=none"]
FILE_SIZE_LIMIT = 4 * 1024 * 1024  # far below a ResNet-18 checkpoint (~90 MB), above every log file


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.mark.slow
def test_an_unwritable_checkpoint_is_one_line_and_the_previous_one_stays_valid(cli_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    run_cli([*RUN, "schedule.max_epochs=1", f"hydra.run.dir={tmp_path}"], cli_env)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    result = subprocess.run(CLI + [*RUN, "schedule.max_epochs=2", f"hydra.run.dir={tmp_path}", "ckpt_path=last"],
                            env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=600,
                            preexec_fn=_limit_file_size)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("carafe-exp: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"carafe-exp: error: cannot write the checkpoint {checkpoint} (") and \
        " MB needed): File too large (the previous file is unchanged)" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] == 0
    assert not [p for p in checkpoint.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"

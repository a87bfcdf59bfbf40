"""Helpers shared by the tests: run the CLI in a process of its own (forked from a pre-imported server), tiny run overrides."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "carafe_exp.cli"]

# Small enough that a classification run takes seconds on 2 CPU cores.
TINY_CLASSIFICATION = [
    "task=classification",
    "model.backbone.depth=18",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.image_size=32",
    "data.resize_size=36",
    "data.sample.num_classes=4",
    "data.sample.train_per_class=8",
    "data.sample.val_per_class=4",
    "data.sample.size=40",
]



# Environment variables read while a process starts (interpreter, loader, malloc, thread pools,
# torch's import-time switches): a run whose values differ from the fork server's gets a process
# of its own. Variables read later (CUDA_HOME, which the extension build sets in the test process,
# CARAFE_EXP_*, WANDB_*) are the request's in either case.
_STARTUP_VARIABLES = {"LD_PRELOAD", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                      "GLIBC_TUNABLES"}
_STARTUP_PREFIXES = ("PYTHON", "MALLOC_", "TORCH")


class _ForkServer:
    """tests/cli_fork_server.py for this test process: started on first use, ended with it."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.env["PYTHONUNBUFFERED"] = "1"
        read_replies, write_replies = os.pipe()
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_fork_server.py")),
                                         str(write_replies)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        env=self.env, cwd=REPO, text=True, pass_fds=(write_replies,))
        os.close(write_replies)
        self.replies = read_replies
        self.buffered = b""
        if not json.loads(self._reply(600)).get("ready"):
            raise RuntimeError("the CLI fork server did not start")

    def serves(self, env: dict[str, str]) -> bool:
        startup = [key for key in {*env, *self.env} if key in _STARTUP_VARIABLES or key.startswith(_STARTUP_PREFIXES)]
        return self.process.poll() is None and all(env.get(key) == self.env.get(key) for key in startup)

    def _reply(self, timeout: float) -> str:
        """The next reply line, read straight from the pipe so that select() sees what is unread."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffered:
            ready, _, _ = select.select([self.replies], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError
            chunk = os.read(self.replies, 65536)
            if not chunk:
                raise RuntimeError(f"the CLI fork server ended (exit {self.process.wait()})")
            self.buffered += chunk
        line, self.buffered = self.buffered.split(b"\n", 1)
        return line.decode()

    def run(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float
            ) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory(prefix="carafe-exp-cli-") as scratch:
            stdout, stderr = Path(scratch) / "stdout", Path(scratch) / "stderr"
            request = {"args": args, "env": env, "cwd": str(cwd), "stdout": str(stdout), "stderr": str(stderr)}
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = json.loads(self._reply(60))["pid"]
            try:
                returncode = json.loads(self._reply(timeout))["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._reply(60)
                raise subprocess.TimeoutExpired([*CLI, *args], timeout,
                                                stdout.read_text(errors="replace"), stderr.read_text(errors="replace"))
            return subprocess.CompletedProcess([*CLI, *args], returncode, stdout.read_text(errors="replace"),
                                               stderr.read_text(errors="replace"))


_fork_server: _ForkServer | None = None


def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: int = 600,
            check: bool = True, fresh_process: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``carafe-exp`` as a user would, in a process of its own.

    The process is forked from tests/cli_fork_server.py, which has done the imports every run
    starts with (10 s of CPU each); ``fresh_process=True`` (the README's claims) or an environment
    that differs in what a process reads at start-up runs ``python -m carafe_exp.cli`` instead.
    """
    global _fork_server
    cwd = cwd or REPO
    if not fresh_process and os.environ.get("CARAFE_EXP_TESTS_FRESH_PROCESSES") != "1":
        if _fork_server is None:
            _fork_server = _ForkServer()
        if _fork_server.serves(env):
            result = _fork_server.run(args, env, cwd, timeout)
            return _checked(result, args, check)
    result = subprocess.run(CLI + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return _checked(result, args, check)


def _checked(result: subprocess.CompletedProcess[str], args: list[str], check: bool
             ) -> subprocess.CompletedProcess[str]:
    if check and result.returncode != 0:
        raise AssertionError(f"carafe-exp {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result

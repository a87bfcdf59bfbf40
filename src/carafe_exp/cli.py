"""The ``carafe-exp`` entry point: compose the config with Hydra, run the job, report failures in one line.

    carafe-exp task=detection upsampler=carafe
    carafe-exp -m upsampler=nearest,carafe
    carafe-exp train=false ckpt_path=outputs/runs/<date>/<time>

The job itself is :func:`carafe_exp.runs.loop.run`, imported when a job starts so that ``--help``,
``--cfg job`` and configuration errors answer without loading Lightning.

Failures: bad input (``carafe_exp.errors.UserInputError`` anywhere in the cause chain) is one
line on stderr and exit status 2; anything else keeps its traceback. Either way the job's
directory gets a ``metrics.json`` with ``"status": "failed"`` and the reason. In a sweep a
failed job does not stop the others; at the end the entry point says how many jobs were run,
skipped, resumed and failed, and exits with status 1 when any failed.

A run stopped by a signal exits with ``128 + signal number`` (a sweep stops there too: the
scheduler asked the whole process to end); a run whose training loss diverged exits with 3
(in a sweep the other jobs go on). Both leave their ``metrics.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from carafe_exp.runs import saved as saved_runs
from carafe_exp.sweeps import report as sweep_report
from carafe_exp.allocator import configure_cpu_allocator
from carafe_exp.errors import UserInputError
from carafe_exp.sweeps.override_quoting import quote_path_overrides
from carafe_exp.paths import config_dir
from carafe_exp.resampler_options import register_resampler_options
from carafe_exp.runs.preflight import check_config
from carafe_exp.runs.record import STATUS_FAILED, STATUS_INTERRUPTED, build_record, write_record
from carafe_exp.sweeps.dirname import SWEPT_KEYS_ENV, short_dirname, swept_keys_of

log = logging.getLogger("carafe_exp")

# Exit status of a single run whose training loss became non-finite (carafe_exp.runs.divergence).
EXIT_DIVERGED = 3

__all__ = ["find_user_error", "main", "one_line", "short_dirname"]

# Set by main() when the command inherits a saved run's overrides; logged once the job's logging is up.
_inherited: saved_runs.InheritedRun | None = None


def find_user_error(error: BaseException) -> UserInputError | None:
    """The UserInputError behind ``error``, through Hydra's InstantiationException and the like."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserInputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(error: BaseException) -> str:
    """The last line of an error message, without a ``module.Class:`` prefix.

    DataLoader workers re-raise with the worker's whole traceback as the message; its last
    line is the original message.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    head, sep, tail = last.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum() and head.split(".")[-1][:1].isupper():
        return tail
    return last


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _is_rank_zero() -> bool:
    # The ranks Lightning reads (torchelastic / SLURM / its own DDP launcher); no Lightning import.
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if variable in os.environ:
            return int(os.environ[variable]) == 0 and int(os.environ.get("NODE_RANK", "0") or 0) == 0
    return True


def _failed_config(cfg: DictConfig) -> dict[str, Any]:
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an unresolvable value may be what failed; keep the config as written
        config = OmegaConf.to_container(cfg, resolve=False)
    return config if isinstance(config, dict) else {}


def write_failure_record(cfg: DictConfig, reason: str, started: float) -> Path | None:
    """The failed job's metrics.json (status, one-line reason, overrides, config); None when it cannot be written."""
    if not (HydraConfig.initialized() and _is_rank_zero()):
        return None
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    task = OmegaConf.select(cfg, "task.name", default=None, throw_on_resolution_failure=False)
    record = build_record(task=str(task), overrides=list(HydraConfig.get().overrides.task), metrics={},
                          config=_failed_config(cfg), wall_time_s=time.perf_counter() - started, throughput={},
                          status=STATUS_FAILED, error=reason)
    try:
        return write_record(output_dir, record)
    except OSError as error:
        log.error("could not write the failure record in %s: %s", output_dir, error)
        return None


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    started = time.perf_counter()
    if _inherited is not None:
        log.info(_inherited.describe())
    try:
        # Configuration errors answer before Lightning is even imported.
        check_config(cfg)
        from carafe_exp.runs.loop import run

        run(cfg)
    except Exception as error:
        if _ended_by_signal_or_divergence(cfg, error, started):
            return
        user_error = find_user_error(error)
        reason = one_line(user_error if user_error is not None else error)
        if user_error is None:
            reason = f"{type(error).__name__}: {reason}"
        record = write_failure_record(cfg, reason, started)
        if _is_multirun():
            # The sweep goes on; the traceback of an unexpected error stays in the job's log file.
            if user_error is None:
                log.error("job failed:\n%s", "".join(traceback.format_exception(error)))
            where = f" (record: {record})" if record else ""
            print(f"carafe-exp: error: job {HydraConfig.get().job.num} failed: {reason}{where}", file=sys.stderr)
            return
        if user_error is None:
            raise
        print(f"carafe-exp: error: {reason}", file=sys.stderr)
        sys.exit(2)


def _ended_by_signal_or_divergence(cfg: DictConfig, error: Exception, started: float) -> bool:
    """Report a run stopped by a signal (exits 128 + signal) or by divergence (exit 3; a sweep goes on)."""
    if type(error).__name__ not in ("RunInterrupted", "RunDiverged"):
        return False
    from carafe_exp.runs.divergence import RunDiverged
    from carafe_exp.runs.interruption import RunInterrupted, exit_code_of

    if isinstance(error, RunInterrupted):
        if not error.recorded and HydraConfig.initialized() and _is_rank_zero():
            record = build_record(task=str(OmegaConf.select(cfg, "task.name", default=None)),
                                  overrides=list(HydraConfig.get().overrides.task), metrics={},
                                  config=_failed_config(cfg), wall_time_s=time.perf_counter() - started,
                                  throughput={}, status=STATUS_INTERRUPTED,
                                  error=f"interrupted by {error.signal_name} before training started",
                                  interruption={"signal": error.signal_name, "epoch": None, "global_step": None,
                                                "checkpoint": None})
            write_record(Path(HydraConfig.get().runtime.output_dir), record)
        where = (f"at epoch {error.epoch}, step {error.global_step}" if error.global_step is not None
                 else "before training")
        saved = f"; checkpoint: {error.checkpoint}" if error.checkpoint is not None else "; no checkpoint"
        print(f"carafe-exp: interrupted by {error.signal_name} {where}{saved} (status \"interrupted\" in "
              f"metrics.json; the same command resumes a sweep, ckpt_path=last a single run)", file=sys.stderr)
        sys.exit(exit_code_of(error.signum))
    assert isinstance(error, RunDiverged)
    kept = f"; last finite checkpoint: {error.checkpoint}" if error.checkpoint is not None else "; no checkpoint"
    if _is_multirun():
        print(f"carafe-exp: error: job {HydraConfig.get().job.num} {error}{kept}", file=sys.stderr)
        return True
    print(f"carafe-exp: error: {error}{kept}", file=sys.stderr)
    sys.exit(EXIT_DIVERGED)


class _DropLightningTips(logging.Filter):
    """Lightning advertises a cloud service on every run; that is not this program's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def _quiet_third_party_noise() -> None:
    # Lightning's pytree helper trips torch's deprecation of LeafSpec checks on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropLightningTips())


def main() -> None:
    """Console-script entry point (``carafe-exp``)."""
    configure_cpu_allocator()  # before the first large tensor: see carafe_exp.allocator
    global _inherited
    argv = quote_path_overrides(sys.argv[1:], saved_runs.override_positions(sys.argv[1:]))
    argv, _inherited = saved_runs.with_saved_overrides(argv)
    sys.argv[1:] = argv  # DDP workers re-run this command line, so they see the same overrides
    if any(token in ("-m", "--multirun") for token in argv):
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys_of([argv[i] for i in saved_runs.override_positions(argv)]))
    _quiet_third_party_noise()
    # upsampler=my_pkg.mod:MyUp and installed entry points are config-group options without a YAML.
    register_resampler_options(argv)
    _hydra_entry()
    outcome = sweep_report.last_outcome()
    if outcome is not None:
        print(f"carafe-exp: {outcome.summary()}", file=sys.stderr)
    if outcome is not None and outcome.failed:
        print(f"carafe-exp: error: {outcome.message()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

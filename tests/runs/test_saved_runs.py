"""The overrides a command inherits from the run its ``ckpt_path`` points into."""

from __future__ import annotations

from pathlib import Path

from carafe_exp.runs.saved import override_positions, with_saved_overrides


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / ".hydra" / "overrides.yaml").write_text(
        "- task=classification\n- model.backbone.depth=18\n- +row=a/b\n- ckpt_path=old\n- train=true\n")
    return run


def test_run_directory_overrides_come_first_and_given_keys_win(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    argv, inherited = with_saved_overrides(["train=false", f"ckpt_path={run}", "model.backbone.depth=34"])
    assert argv == ["task=classification", "+row=a/b", "train=false", f"ckpt_path={run}", "model.backbone.depth=34"]
    assert inherited is not None and inherited.run_dir == run


def test_checkpoint_file_and_last_find_their_run(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    argv, _ = with_saved_overrides([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert argv[0] == "task=classification"
    argv, _ = with_saved_overrides(["--cfg", "job", "ckpt_path=last", f'hydra.run.dir="{run}"'])
    assert argv[:2] == ["--cfg", "job"] and argv[2] == "task=classification"


def test_sweeps_and_unrelated_commands_are_left_alone(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    for argv in (["-m", f"ckpt_path={run}", "seed=1,2"], ["task=detection"], [f"ckpt_path={tmp_path / 'x.ckpt'}"]):
        assert with_saved_overrides(argv) == (argv, None)
    assert override_positions(["-m", "--cfg", "job", "a=1", "-cn", "config", "b=2"]) == [3, 6]


def test_sweep_job_directory_is_quoted_only_when_it_exists(tmp_path: Path) -> None:
    from carafe_exp.sweeps.override_quoting import quote_path_value

    job = tmp_path / "0_upsampler.k_up=3,seed=1"
    job.mkdir()
    assert quote_path_value(f"ckpt_path={job}") == f"ckpt_path='{job}'"
    assert quote_path_value(f"hydra.run.dir={job}") == f"hydra.run.dir='{job}'"
    # Sweeps, plain paths, already quoted values and paths that do not exist stay as typed.
    for override in ("upsampler.k_up=3,5", f"ckpt_path={tmp_path}", f"ckpt_path='{job}'", "ckpt_path=last",
                     f"ckpt_path={tmp_path / 'a=1,b=2'}", "+row=carafe/table9/enc5_up7"):
        assert quote_path_value(override) == override


def test_a_sweep_job_directory_is_accepted_as_ckpt_path(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A job directory's ``=`` and ``,`` made Hydra fail with "mismatched input '='" (exit 1)."""
    from helpers import run_cli

    job = tmp_path / "sweep" / "0_seed=3,train=true"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=3\n- task=classification\n")
    result = run_cli(["--cfg", "job", "train=false", f"ckpt_path={job}"], cli_env)
    assert "seed: 3" in result.stdout and "name: classification" in result.stdout, result.stdout[-2000:]
    assert f"ckpt_path: {job}" in result.stdout, result.stdout[-2000:]

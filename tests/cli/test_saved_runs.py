"""The overrides a command inherits from the run its ``ckpt_path`` points into."""

from __future__ import annotations

from pathlib import Path

from carafe_exp.saved_runs import override_positions, with_saved_overrides


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

"""A researcher's own upsampler through the command line: the README's "Add your own upsampler", as written.

The README's module is written into a temporary directory, its commands run there (the Table 2
sweep on the sample data, tiny schedule), and ``carafe-tables`` must show the user's extra row
below the paper's rows; an installed distribution's entry point works by name in the comparison
beyond the papers. The one-line errors are tested in-process: tests/resample/test_user_resamplers.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from carafe_exp.analysis.complexity import main as complexity_main
from carafe_exp.analysis.complexity import table2_rows
from carafe_exp.analysis.tables import main as tables_main
from carafe_exp.runs.loggers import run_tags
from carafe_exp.runs.name import run_name
from helpers import REPO, run_cli

TINY_DETECTION = ["model.backbone.weights=null", "schedule.max_epochs=1", "data.sample.num_train=2",
                  "data.sample.num_val=1", "data.sample.num_test=1", "data.num_workers=0", "logger=none",
                  "callbacks=none"]
USER_CLASS = "my_upsamplers.my_up:MyUp"


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Add your own upsampler")
    return text[start:text.index("\n### ", start + 1)]


def write_readme_module(directory: Path) -> None:
    code = re.search(r"```python\n(.*?)```", readme_section(), re.S).group(1)
    relative = code.splitlines()[0].removeprefix("# ").strip()
    assert relative == "my_upsamplers/my_up.py"
    (directory / relative).parent.mkdir(parents=True)
    (directory / relative).write_text(code)


def readme_commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", readme_section(), re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def with_path(env: dict[str, str], directory: Path) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(directory), env.get("PYTHONPATH")) if p)}


@pytest.mark.slow
def test_readme_own_upsampler_gives_table2_with_an_extra_row(tmp_path: Path, cli_env: dict[str, str],
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    write_readme_module(work)
    sweep_command, tables_command, complexity_command = readme_commands()
    assert sweep_command[0] == "PYTHONPATH=$PWD" and sweep_command[1] == "carafe-exp"
    sweep = tmp_path / "sweep"
    run_cli([*sweep_command[2:], *TINY_DETECTION, f"hydra.sweep.dir={sweep}"],
            with_path(cli_env, work), cwd=work, timeout=900)
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert len(jobs) == 3
    # The sweep directory names it as the user typed it.
    user_job = next(p.parent for p in jobs if f"upsampler={USER_CLASS}" in p.parent.name)
    record = json.loads((user_job / "metrics.json").read_text())
    assert record["status"] == "completed" and record["config"]["upsampler"]["name"] == USER_CLASS
    choices = {"model": "faster_rcnn", "experiment": "carafe/table2"}
    assert record["name"].startswith(f"detection-faster_rcnn-{USER_CLASS}")
    assert run_name(record["config"], choices) == f"detection-faster_rcnn-{USER_CLASS}"
    assert f"upsampler:{USER_CLASS}" in run_tags({"upsampler": USER_CLASS, "task": "detection"}, choices)

    monkeypatch.syspath_prepend(str(work))  # carafe-tables measures the user's module's cost
    assert tables_command[:1] == ["carafe-tables"]
    assert tables_main([str(sweep), "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["table"] == "carafe/table2"
    labels = [row["label"] for row in table["rows"]]
    assert labels[:9] == ["Nearest", "Bilinear", "N.C.", "B.C.", "Deconv", "P.S.", "GUM", "S.A.", "CARAFE"]
    extra = table["rows"][-1]
    assert extra["label"] == USER_CLASS and extra["extra"] and extra["status"] == "completed"
    assert extra["values"]["bbox/AP"]["ours"] is not None and extra["values"]["bbox/AP"]["paper"] is None
    assert extra["values"]["Params"]["ours"] == "590,080"  # the README's 3×3 conv at C=256: 256·256·9 + 256
    assert {row["label"]: row["status"] for row in table["rows"]}["CARAFE"] == "completed"
    assert not table["not_in_table"]
    assert tables_main([str(sweep)]) == 0
    text = capsys.readouterr().out
    assert USER_CLASS in text and "not in the paper" in text

    assert complexity_command[:3] == ["PYTHONPATH=$PWD", "python", "-m"]
    complexity_main(complexity_command[4:])
    assert "Table 2" in capsys.readouterr().out  # rich cuts long labels at this width; the row is checked below
    row = table2_rows(extra=[USER_CLASS])[-1]
    assert (row["key"], row["flops"], row["params"]) == (USER_CLASS, 4_720_640, 590_080)  # 3×3 conv at 2H×2W


def write_distribution(site: Path) -> None:
    """An installed distribution (its .dist-info on the path) that registers ``my_up`` as an upsampler."""
    package = site / "my_upsamplers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "my_up.py").write_text(re.search(r"```python\n(.*?)```", readme_section(), re.S).group(1))
    info = site / "my_upsamplers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-upsamplers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[carafe_exp.upsamplers]\nmy_up = {USER_CLASS}\n")


@pytest.mark.slow
def test_beyond_detection_experiment_with_an_installed_entry_point(tmp_path: Path, cli_env: dict[str, str],
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The beyond-the-papers Faster R-CNN comparison, FADE and the installed ``my_up``, published numbers beside."""
    site = tmp_path / "site"
    write_distribution(site)
    sweep = tmp_path / "sweep"
    run_cli(["-m", "experiment=beyond/faster_rcnn", "upsampler=fade,my_up", *TINY_DETECTION,
             f"hydra.sweep.dir={sweep}"], with_path(cli_env, site), timeout=900)
    monkeypatch.syspath_prepend(str(site))
    assert tables_main([str(sweep), "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["table"] == "beyond/faster_rcnn" and table["name"].startswith("Beyond the papers")
    rows = {row["label"]: row for row in table["rows"]}
    fade = rows["FADE"]["values"]["bbox/AP"]
    assert rows["FADE"]["status"] == "completed" and fade["paper"] == 38.5  # tiny-smart/sapa README
    assert rows["FADE"]["values"]["Params"]["ours"] == "47,257"  # one module at C=256: spec §1's count
    assert rows["FreqFusion"]["status"] == "missing" and rows["FreqFusion"]["values"]["bbox/AP"]["paper"] == 39.4
    assert rows["my_up"]["extra"] and rows["my_up"]["status"] == "completed"
    assert any("Linwei-Chen/FreqFusion README" in note for note in table["notes"])


def test_a_yaml_in_the_users_config_directory(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """``upsampler/my_up.yaml`` in a directory given by ``hydra.searchpath`` names the class and its parameters."""
    (tmp_path / "conf" / "upsampler").mkdir(parents=True)
    (tmp_path / "conf" / "upsampler" / "my_up.yaml").write_text(f"name: {USER_CLASS}\nmix: 0.5\n")
    result = run_cli([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "upsampler=my_up", "--cfg", "job",
                      "--package", "upsampler"], cli_env)
    assert f"name: {USER_CLASS}" in result.stdout and "mix: 0.5" in result.stdout

"""A wheel built from the repo installs into a fresh venv and runs from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from helpers import REPO


@pytest.mark.slow
def test_wheel_ships_conf_and_csrc_and_runs_outside_the_repo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("carafe_exp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "carafe_exp/conf/config.yaml" in names
    assert any(n.startswith("carafe_exp/conf/upsampler/") for n in names)
    assert any(n.startswith("carafe_exp/csrc/") and n.endswith(".cu") for n in names)
    assert any(n.startswith("carafe_exp/csrc/") and n.endswith(".cpp") for n in names)

    # A fresh venv; its dependencies come from this interpreter's site-packages through a .pth
    # line (reinstalling torch would download gigabytes), the project itself only from the wheel.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
    Path(fresh_site, "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(env_dir / "bin" / "carafe-exp"), "--cfg", "job"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "_target_: carafe_exp." in result.stdout
    located = subprocess.run(
        [str(python), "-c", "import carafe_exp.paths as p; print(p.config_dir()); print(p.csrc_dir())"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(path).is_relative_to(Path(fresh_site)) for path in located), located

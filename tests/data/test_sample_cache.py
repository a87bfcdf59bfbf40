"""Sample datasets are generated once, atomically, and regenerated when their parameters change."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from carafe_exp.data.sample_cache import ensure_sample
from carafe_exp.runs.record import read_record, write_json_atomic


def _writer(directory: Path, count: int) -> None:
    for i in range(count):
        (directory / f"{i}.txt").write_text(str(i))


def test_generated_once_and_regenerated_on_new_params(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    ensure_sample(root, _writer, {"count": 3})
    first = (root / "0.txt").stat().st_mtime_ns
    ensure_sample(root, _writer, {"count": 3})
    assert (root / "0.txt").stat().st_mtime_ns == first
    ensure_sample(root, _writer, {"count": 5})
    assert sorted(p.name for p in root.glob("*.txt")) == [f"{i}.txt" for i in range(5)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_concurrent_generation_yields_one_complete_sample(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: ensure_sample(root, _writer, {"count": 50}), range(4)))
    assert len(list(root.glob("*.txt"))) == 50


def test_metrics_json_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"metrics": {"a": 1.0}})
    write_json_atomic(path, {"metrics": {"a": 2.0}})
    assert read_record(path) == {"metrics": {"a": 2.0}}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

"""Sample datasets are generated once, atomically, and regenerated when their parameters change."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from carafe_exp.data.sample_cache import ensure_sample, variant_dir
from carafe_exp.runs.record import read_record, write_json_atomic


def _writer(directory: Path, count: int) -> None:
    for i in range(count):
        (directory / f"{i}.txt").write_text(str(i))


def test_generated_once_and_other_params_get_a_directory_of_their_own(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    assert ensure_sample(root, _writer, {"count": 3}) == root
    first = (root / "0.txt").stat().st_mtime_ns
    assert ensure_sample(root, _writer, {"count": 3}) == root
    assert (root / "0.txt").stat().st_mtime_ns == first
    other = ensure_sample(root, _writer, {"count": 5})
    assert other == variant_dir(root, {"count": 5}) != root
    assert sorted(p.name for p in other.glob("*.txt")) == [f"{i}.txt" for i in range(5)]
    assert (root / "0.txt").stat().st_mtime_ns == first and len(list(root.glob("*.txt"))) == 3  # left alone
    assert ensure_sample(root, _writer, {"count": 5}) == other  # found again, not regenerated
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_sample_being_read_survives_a_request_with_other_params(tmp_path: Path) -> None:
    """Two jobs of one sweep with different ``data.sample`` values share the cache directory."""
    root = ensure_sample(tmp_path / "sample", _writer, {"count": 20})
    reading = sorted(root.glob("*.txt"))
    with ThreadPoolExecutor(4) as pool:
        others = set(pool.map(lambda n: ensure_sample(tmp_path / "sample", _writer, {"count": n}), [7, 7, 9, 9]))
    assert [path.read_text() for path in reading] == [path.name[:-4] for path in reading]
    assert len(others) == 2 and root not in others
    assert {len(list(path.glob("*.txt"))) for path in others} == {7, 9}


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

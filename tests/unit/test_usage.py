"""The usage store: a moving-window limit exact across processes, and last use."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from service.access.usage import LAST_USE_EVERY_SECONDS, SqliteStorage, Usage

HITS = 300


def _take(path: str, limit: str, out: multiprocessing.Queue) -> None:
    usage = Usage(Path(path))
    out.put(sum(usage.hit("busy", limit) is None for _ in range(HITS)))


def test_limit_is_exact_across_processes(tmp_path: Path):
    path = str(tmp_path / "usage.sqlite3")
    out: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    workers = [
        multiprocessing.get_context("fork").Process(target=_take, args=(path, "500/hour", out))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert sum(out.get(timeout=5) for _ in workers) == 500  # of 900 tried


def test_retry_after_is_when_the_oldest_call_leaves_the_window(tmp_path: Path):
    usage = Usage(tmp_path / "usage.sqlite3")
    assert [usage.hit("k", "2/minute") for _ in range(2)] == [None, None]
    retry = usage.hit("k", "2/minute")
    assert retry is not None and 55 <= retry <= 60
    assert usage.hit("other", "2/minute") is None  # keys do not share a window


@pytest.mark.parametrize("limit", ["1/second", "3 per 2 seconds"])
def test_window_moves(tmp_path: Path, limit: str):
    storage = SqliteStorage(tmp_path / "usage.sqlite3")
    usage = Usage(tmp_path / "usage.sqlite3")
    amount = int(limit.split()[0].split("/")[0])
    assert all(usage.hit("k", limit) is None for _ in range(amount))
    assert usage.hit("k", limit) is not None
    # Age the recorded calls instead of sleeping through the window.
    storage._transaction(lambda db: db.execute("UPDATE hits SET at = at - 10"))
    assert usage.hit("k", limit) is None


def test_last_use_keeps_the_latest_and_is_written_at_most_once_a_second(tmp_path: Path):
    path = tmp_path / "usage.sqlite3"
    one, two = Usage(path), Usage(path)
    one.touch("k")
    first = two.last_uses()["k"]
    assert abs(first - time.time()) < 5
    one.touch("k")  # within the second: not written again
    assert two.last_uses()["k"] == first
    SqliteStorage(path).touch("k", first - 100)  # an older moment never wins
    assert two.last_uses()["k"] == first
    assert LAST_USE_EVERY_SECONDS <= 1.0

"""The SQLite queue's doorbell: an idle job worker wakes when a job is queued, not at
its next poll. Real FIFOs, a ring from another process."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from service.jobs.doorbell import BELL, WakeOnBell, queue_bell, ring
from tests.unit.conftest import API

# Far longer than any wake below may take: a wait that lasts it was not woken.
IDLE_WAIT = 60.0
WOKEN_WITHIN = 10.0


def waiting(flag: WakeOnBell) -> tuple[threading.Thread, list[bool]]:
    """A job worker's idle sleep, in a thread; `ended` gets wait()'s answer."""
    ended: list[bool] = []
    thread = threading.Thread(target=lambda: ended.append(flag.wait(IDLE_WAIT)), daemon=True)
    thread.start()
    return thread, ended


def test_a_ring_from_another_process_ends_an_idle_wait(tmp_path: Path) -> None:
    flag = WakeOnBell(threading.Event(), tmp_path / BELL)
    thread, ended = waiting(flag)
    code = (
        "import sys, pathlib; from service.jobs.doorbell import ring; "
        "ring(pathlib.Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / BELL)], check=True, timeout=30)
    thread.join(WOKEN_WITHIN)
    assert ended == [False], "the ring did not end the wait (False: not a stop)"


def test_a_stop_wakes_its_own_worker_not_another_on_the_same_bell(tmp_path: Path) -> None:
    stop, others_stop = threading.Event(), threading.Event()
    flag = WakeOnBell(stop, tmp_path / BELL)
    other = WakeOnBell(others_stop, tmp_path / BELL)  # a second idle worker on the bell
    other_thread, other_ended = waiting(other)
    thread, ended = waiting(flag)
    stop.set()
    flag.wake()  # what its SIGTERM handler does
    thread.join(WOKEN_WITHIN)
    assert ended == [True]
    assert other_thread.is_alive() and not other_ended  # still asleep
    others_stop.set()
    other.wake()
    other_thread.join(WOKEN_WITHIN)
    assert other_ended == [True]


def test_ringing_with_nobody_listening_neither_blocks_nor_fails(tmp_path: Path) -> None:
    ring(tmp_path / "missing.bell")  # no bell at all
    listener = WakeOnBell(threading.Event(), tmp_path / BELL)  # open, never reading
    for _ in range(70_000):  # past a pipe's 64 KiB: a full bell
        ring(tmp_path / BELL)
    assert listener.fd is not None


def test_a_file_in_the_bells_place_leaves_the_worker_polling(tmp_path: Path) -> None:
    (tmp_path / BELL).write_text("not a FIFO")
    stop = threading.Event()
    flag = WakeOnBell(stop, tmp_path / BELL)
    assert flag.fd is None
    assert flag.wait(0.01) is False  # a poll's sleep, as huey's own
    thread, ended = waiting(flag)
    stop.set()  # no bell: the stop event alone ends it
    thread.join(WOKEN_WITHIN)
    assert ended == [True]
    ring(tmp_path / BELL)  # a job queued meanwhile
    assert (tmp_path / BELL).read_text() == "not a FIFO"  # left as it was


def test_a_job_queued_on_sqlite_rings_the_bell(make_app, scripts_dir: Path) -> None:
    app = make_app()
    settings = app.extensions["scriptgate"].settings
    bell = queue_bell(settings)
    assert bell is not None and bell.parent == settings.job_data_dir
    settings.job_data_dir.mkdir(parents=True, exist_ok=True)
    thread, ended = waiting(WakeOnBell(threading.Event(), bell))
    headers = {**API, "Prefer": "respond-async"}
    assert app.test_client().get("/api/hello.py", headers=headers).status_code == 202
    thread.join(WOKEN_WITHIN)
    assert ended == [False]


def test_redis_queues_have_no_bell(tmp_path: Path, make_app) -> None:
    app = make_app(job_broker_url="redis://127.0.0.1:1/0")
    assert queue_bell(app.extensions["scriptgate"].settings) is None

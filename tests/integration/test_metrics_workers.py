"""Metrics stay true across gunicorn workers: summed, never lost, never counted twice.

Each test starts its own 3-worker server, so the totals it asserts are exactly what it sent.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from service.observability import multiproc
from tests.integration.prom import (
    ADMIN,
    ADMIN_KEY,
    API,
    API_KEY,
    call,
    in_progress,
    requests_by_series,
    script_requests,
    write_scripts,
)
from tests.servers import Gunicorn, gunicorn, wait_until

WORKERS = 3
KEYS = {"API_KEY": API_KEY, "ADMIN_API_KEY": ADMIN_KEY}
# One thread per worker: a worker then accepts one connection at a time, so WORKERS
# concurrent calls are sure to land one on each worker.
ONE_THREAD = ("--threads", "1")


def env_with_metrics_dir(
    tmp_path: Path, max_requests: int = 0, jitter: int = 0
) -> tuple[dict[str, str], Path]:
    """The keys and a metrics directory the test can look into; with `max_requests`,
    workers are recycled after that many requests (plus up to `jitter` more)."""
    metrics_dir = tmp_path / "multiproc"
    metrics_dir.mkdir()
    env = {**KEYS, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    if max_requests:
        env["SCRIPTGATE_MAX_REQUESTS"] = str(max_requests)
        env["SCRIPTGATE_MAX_REQUESTS_JITTER"] = str(jitter)
    return env, metrics_dir


def gather_on_every_worker(server: Gunicorn, folder: Path) -> set[int]:
    """Put one call on each worker at the same time; return the pids that answered."""
    folder.mkdir()
    params = {"dir": str(folder), "n": str(WORKERS)}

    def call(_: int) -> dict:
        return server.get("/api/gather.py", headers=API, params=params).json()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        answers = list(pool.map(call, range(WORKERS)))
    assert all(a["gathered"] for a in answers), answers
    return {a["pid"] for a in answers}


def test_health_and_metrics_agree_exactly_and_sum_every_worker(tmp_path: Path) -> None:
    scripts = write_scripts(tmp_path / "scripts")
    with gunicorn(scripts, tmp_path, workers=WORKERS, env=KEYS, extra_args=ONE_THREAD) as server:
        pids = gather_on_every_worker(server, tmp_path / "gather")
        assert len(pids) == WORKERS
        sent = WORKERS
        for path, headers, count, status in [
            ("/hello.py", {}, 10, 200),
            ("/api/pid.py", API, 10, 200),
            ("/admin/pid.py", ADMIN, 5, 200),
            ("/nope.py", {}, 5, 404),
            ("/api/boom.py", API, 3, 500),
        ]:
            for _ in range(count):
                assert server.get(path, headers=headers).status_code == status
                sent += 1
        health = server.get("/_platform/health").json()
        as_json = server.get("/_platform/metrics", params={"format": "json"}).json()
        counts = requests_by_series(server)
        health_again = server.get("/_platform/health").json()

    assert health["requests_total"] == sent == 36
    assert as_json["requests_total"] == sent
    assert script_requests(counts) == sent
    assert health_again["requests_total"] == sent, "health polling inflated the total"
    assert health["errors_total"] == as_json["errors_total"] == 3
    assert as_json["requests_by_area"] == {"root": 15, "api": 13 + WORKERS, "admin": 5}
    gathered = frozenset(
        {"zone": "api", "script": "gather.py", "method": "GET", "status": "200"}.items()
    )
    assert counts[gathered] == WORKERS, "a worker's counts are missing from the sum"


def test_sigkilled_worker_never_lowers_a_counter_and_drops_its_in_progress(
    tmp_path: Path,
) -> None:
    scripts = write_scripts(tmp_path / "scripts")
    hold = tmp_path / "hold"
    hold.mkdir()
    with gunicorn(scripts, tmp_path, workers=WORKERS, env=KEYS, extra_args=ONE_THREAD) as server:
        gather_on_every_worker(server, tmp_path / "gather")  # every worker has counts
        for _ in range(9):
            assert server.get("/api/pid.py", headers=API).ok

        outcome: dict[str, object] = {}

        def held_call() -> None:
            try:
                outcome["response"] = server.get("/api/hold.py", headers=API, params={"dir": hold})
            except requests.ConnectionError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=held_call)
        caller.start()
        try:
            busy = int(wait_until(lambda: list(hold.iterdir()), 10, what="hold")[0].name)
            assert in_progress(server, "api") == 1.0
            before = requests_by_series(server)
            os.kill(busy, signal.SIGKILL)
            caller.join(15)
            wait_until(
                lambda: busy not in server.worker_pids() and len(server.worker_pids()) == WORKERS,
                15,
                what="gunicorn to replace the killed worker",
            )
            wait_until(lambda: in_progress(server, "api") == 0.0, 10, what="in_progress back to 0")
            after = requests_by_series(server)
            health = server.get("/_platform/health").json()
        finally:
            (hold / "release").touch()
            caller.join(20)

    assert "error" in outcome, "the killed worker's call should have lost its connection"
    for key, value in before.items():
        assert after[key] >= value, f"{dict(key)} went down from {value} to {after[key]}"
        if ("zone", "platform") not in key:
            assert after[key] == value, f"{dict(key)} changed without a request"
    assert script_requests(after) == health["requests_total"] == WORKERS + 9


def test_workers_dying_together_are_all_replaced_and_merged(tmp_path: Path) -> None:
    """Workers that die while an earlier death is being merged all come back, counts intact.

    gunicorn 23 ran child_exit inside its SIGCHLD handler, so a death during a merge
    re-entered the merge: the master crashed on a half-imported prometheus_client or
    blocked forever on its own flock. The test makes that overlap certain instead of
    staggering kills by a few ms: it holds the shared lock a scrape holds, so the
    master's merge of the first dead worker waits inside child_exit, and only once that
    is seen does it kill the others and see them die unreaped, before letting go.
    """
    scripts = write_scripts(tmp_path / "scripts")
    env, metrics_dir = env_with_metrics_dir(tmp_path)
    with gunicorn(scripts, tmp_path, workers=WORKERS, env=env, extra_args=ONE_THREAD) as server:
        gather_on_every_worker(server, tmp_path / "gather")  # every worker has files to merge
        for _ in range(30):
            assert call(server, "/hello.py")[0] == 200
        before = script_requests(requests_by_series(server))
        first, *others = sorted(server.worker_pids())
        victims = {first, *others}
        with multiproc.reading(metrics_dir):  # as a slow scrape would: merges must wait
            os.kill(first, signal.SIGKILL)
            # Reaped but its files still there: the master is inside child_exit, waiting.
            wait_until(
                lambda: (
                    first not in server.worker_pids() and first in file_pids(metrics_dir).values()
                ),
                10,
                what="the master to reap the first worker and wait to merge its files",
            )
            for pid in others:
                os.kill(pid, signal.SIGKILL)
            # Zombies: they died while the master was still busy with the first one.
            wait_until(
                lambda: all(unreaped(pid) for pid in others),
                10,
                what="the other workers to die while the first one's merge is in progress",
            )
        wait_until(
            lambda: len(server.worker_pids()) == WORKERS and not server.worker_pids() & victims,
            20,
            what="gunicorn to replace every killed worker",
        )
        after = script_requests(requests_by_series(server))
        health = server.get("/_platform/health").json()
        merged = not victims & set(file_pids(metrics_dir).values())

    assert before == after == health["requests_total"] == WORKERS + 30
    assert merged, "a dead worker's files were never merged"


def unreaped(pid: int) -> bool:
    """Dead, and not yet waited for by its parent (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def file_pids(directory: Path) -> dict[str, int]:
    """Per-worker files of the multiprocess dir (archives left out) and their pids."""
    pids = {}
    for path in directory.glob("*.db"):
        suffix = path.stem.rsplit("_", 1)[-1]
        if suffix != "archive":
            assert re.fullmatch(r"\d+", suffix), path.name
            pids[path.name] = int(suffix)
    return pids


def test_max_requests_recycling_keeps_exact_monotonic_totals(tmp_path: Path) -> None:
    scripts = write_scripts(tmp_path / "scripts")
    env, metrics_dir = env_with_metrics_dir(tmp_path, max_requests=20, jitter=0)
    total = 200
    with gunicorn(scripts, tmp_path, workers=WORKERS, env=env, extra_args=ONE_THREAD) as server:
        first_workers = server.worker_pids()
        served_by: set[int] = set()
        samples: list[dict[frozenset, float]] = []
        for sent in range(1, total + 1):
            status, body = call(server, "/api/pid.py", API)
            assert status == 200
            served_by.add(body["pid"])
            if sent % 10 == 0:
                counts = requests_by_series(server)
                # Every call before this scrape has been answered, so nothing may be missing
                # (a dead worker not yet merged) or counted twice (merged and still read).
                assert script_requests(counts) == sent, f"after {sent} calls"
                samples.append(counts)
        health = server.get("/_platform/health").json()

        def settled() -> bool:
            live = server.worker_pids()
            return len(live) == WORKERS and set(file_pids(metrics_dir).values()) <= live

        wait_until(settled, 15, what="dead workers' files to be merged away")
        files = sorted(p.name for p in metrics_dir.glob("*.db"))
        pids_with_files = set(file_pids(metrics_dir).values())
        live = server.worker_pids()

    assert health["requests_total"] == total
    assert len(served_by) > WORKERS, f"no worker was recycled: {served_by}"
    assert first_workers - live, "max_requests should have replaced a first worker"
    for earlier, later in itertools.pairwise(samples):
        for key, value in earlier.items():
            assert later.get(key, 0) >= value, f"{dict(key)} went down"
    assert {"counter_archive.db", "histogram_archive.db"} <= set(files), files
    assert pids_with_files <= live, files
    assert not (served_by - live) & pids_with_files, "a dead worker's files are still read"


@dataclass(frozen=True)
class Reading:
    """One scrape, bracketed by the calls: answered before it began, begun after it ended."""

    answered: int
    scraped: int
    begun: int
    workers: frozenset[int]  # the live workers as it began


class BackToBackScrapes(threading.Thread):
    """Scrapes without a pause until stopped (bounded in count and time).

    `scrape_after_now()` returns once a scrape has begun after it was called, so the
    test decides where scrapes must fall instead of hoping they happen to.
    """

    def __init__(self, server: Gunicorn, progress: dict[str, int]) -> None:
        super().__init__(name="scrapes")
        self.server = server
        self.progress = progress
        self.readings: list[Reading] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.began = threading.Condition()
        self.mark = 0  # bumped by scrape_after_now()
        self.seen = 0  # the mark as the latest scrape began
        self.ended = False

    def run(self) -> None:
        deadline = time.monotonic() + 60
        try:
            while (
                not self.stopping.is_set()
                and len(self.readings) < 3000
                and time.monotonic() < deadline
            ):
                with self.began:
                    self.seen = self.mark
                    answered = self.progress["answered"]
                    workers = frozenset(self.server.worker_pids())
                    self.began.notify_all()
                scraped = int(script_requests(requests_by_series(self.server)))
                self.readings.append(Reading(answered, scraped, self.progress["begun"], workers))
        except BaseException as exc:
            self.error = exc
        finally:
            with self.began:
                self.ended = True
                self.began.notify_all()

    def scrape_after_now(self, timeout: float = 10) -> None:
        with self.began:
            self.mark += 1
            mark = self.mark
            self.began.wait_for(lambda: self.seen >= mark or self.ended, timeout)
            began = self.seen >= mark
        if self.error is not None:
            raise AssertionError(
                f"scrape {len(self.readings) + 1} failed: {self.error!r}"
            ) from self.error
        assert began, f"no scrape began within {timeout} s ({len(self.readings)} so far)"

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def test_scrapes_racing_worker_recycling_never_lose_or_double_count(tmp_path: Path) -> None:
    """A scrape that overlaps a dead worker's merge sees each call exactly once.

    Calls go one at a time, so a scrape must report at least the calls answered before
    it began and at most the calls begun before it ended. Scrapes run back to back from
    before the first call until the recycling has demonstrably ended (every dead worker
    replaced and its files merged), and each call waits for a scrape to begin after the
    previous answer: a scrape starts right behind every call, including the one after
    which its worker exits, and the readings cover every stage of the run.
    """
    scripts = write_scripts(tmp_path / "scripts")
    env, metrics_dir = env_with_metrics_dir(tmp_path, max_requests=10, jitter=6)
    calls = 45
    progress = {"begun": 0, "answered": 0}

    with gunicorn(scripts, tmp_path, workers=WORKERS, env=env, extra_args=ONE_THREAD) as server:
        first_workers = server.worker_pids()
        scrapes = BackToBackScrapes(server, progress)
        scrapes.start()
        served_by = set()
        try:
            scrapes.scrape_after_now()  # one before any call, hence before any recycling
            for _ in range(calls):
                progress["begun"] += 1
                status, body = call(server, "/api/pid.py", API)
                assert status == 200
                served_by.add(body["pid"])
                progress["answered"] += 1
                scrapes.scrape_after_now()

            def recycled_and_merged() -> bool:
                live = {pid for pid in server.worker_pids() if not unreaped(pid)}
                return len(live) == WORKERS and set(file_pids(metrics_dir).values()) <= live

            wait_until(recycled_and_merged, 15, what="dead workers replaced and merged")
            scrapes.scrape_after_now()  # and one after the recycling is over
        finally:
            scrapes.stop()
        readings = scrapes.readings
        final = script_requests(requests_by_series(server))

    assert len(served_by) > WORKERS, "no worker was recycled during the run"
    assert readings[0].workers == first_workers, "the scrapes began after a recycling"
    assert first_workers - readings[-1].workers, "the scrapes ended before any recycling"
    stages = {r.scraped for r in readings}
    assert len(stages) >= 3, f"scrapes saw only {sorted(stages)}: too few overlapped the run"
    for r in readings:
        assert r.answered <= r.scraped <= r.begun, (
            f"scrape said {r.scraped}, expected {r.answered}..{r.begun}"
        )
    scraped_values = [r.scraped for r in readings]
    assert scraped_values == sorted(scraped_values), "a scrape went backwards"
    assert final == calls

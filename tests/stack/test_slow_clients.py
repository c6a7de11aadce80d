"""Slow clients (slowloris): what `scriptgate serve` alone withstands, and what the
shipped Apache with mod_reqtimeout in front of it withstands.

A slow client sends the start of a request, then one byte every half second, and never
finishes. gunicorn's gthread worker gives a connection a thread at its first byte and
reads the headers on that thread with no time limit, and accepts no more connections
than it has threads (server.py: `worker_connections = THREADS`); the sync worker reads
them in its one process. So WORKERS x THREADS clients trickling their headers take every
thread, and every other call waits in the listen backlog. Apache reads a request's
headers, and the first 16 KiB of its body, itself, bounded by `RequestReadTimeout`,
before it opens a connection to a replica; the rest of a body it passes on as it comes.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from bench import apache
from service.config import DEFAULT_THREADS, DEFAULT_WORKERS, Settings
from tests.servers import gunicorn, wait_until
from tests.stack.conftest import make_scripts
from tests.stack.test_apache import CLIENT, PROXY


def header_timeouts() -> tuple[int, int]:
    """The shipped vhost's `RequestReadTimeout header=<first>-<most>` (10 and 20 s). The
    slow clients send 2 bytes/s, far below its MinRate, so they get the first."""
    found = re.search(
        r"^RequestReadTimeout .*\bheader=(\d+)-(\d+)\b", apache.VHOST.read_text(), re.M
    )
    assert found, f"{apache.VHOST} sets no RequestReadTimeout header=<first>-<most>"
    return int(found[1]), int(found[2])


HEADER_TIMEOUT, HEADER_TIMEOUT_MAX = header_timeouts()
# A call to hello.py answers in milliseconds; one not answered in 3 s waits for a thread.
CALL_TIMEOUT = 3
TRICKLE_INTERVAL = 0.5
# Slow headers: a request line, then an endless header.
SLOW_HEADERS = b"GET /hello.py HTTP/1.1\r\nHost: slow\r\nX-Slow: "
# mod_proxy_http reads this much of a body before it opens a connection to a replica.
APACHE_PREFETCH = 16 * 1024
# Most the trickle runs, whatever a test does: 2 bytes/s stays far below gunicorn's
# 8190-byte header field limit for that long.
TRICKLE_SECONDS = 60
ROUND_TIMEOUT = 5


needs_apache = pytest.mark.skipif(not apache.available(), reason="apache2 not installed")


@dataclass
class SlowClient:
    sock: socket.socket
    opened: float
    dropped_after: float | None = None  # seconds from connect until the server closed it
    answer: bytes = b""  # what the server sent before closing


class Trickle:
    """Slow-header clients on one port, kept trickling by one background thread."""

    def __init__(self, port: int, source: str, opening: bytes) -> None:
        self.port = port
        self.source = source
        self.opening = opening
        self.clients: list[SlowClient] = []
        self.rounds = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)

    def open(self, count: int) -> None:
        """`count` more clients, each connected with its opening bytes sent."""
        for _ in range(count):
            sock = socket.create_connection(
                ("127.0.0.1", self.port), timeout=5, source_address=(self.source, 0)
            )
            sock.sendall(self.opening)
            with self._changed:
                self.clients.append(SlowClient(sock, time.monotonic()))

    def next_round(self) -> None:
        """Return once every connected client has sent one more header byte."""
        with self._changed:
            seen = self.rounds
            if not self._changed.wait_for(lambda: self.rounds > seen, timeout=ROUND_TIMEOUT):
                raise TimeoutError(f"no trickle round within {ROUND_TIMEOUT}s")

    def dropped(self) -> list[SlowClient]:
        with self._changed:
            return [c for c in self.clients if c.dropped_after is not None]

    def _run(self) -> None:
        deadline = time.monotonic() + TRICKLE_SECONDS
        while not self._stop.wait(TRICKLE_INTERVAL) and time.monotonic() < deadline:
            with self._changed:
                for client in self.clients:
                    if client.dropped_after is None:
                        self._trickle(client)
                self.rounds += 1
                self._changed.notify_all()

    @staticmethod
    def _trickle(client: SlowClient) -> None:
        """One more byte, unless the server has answered or closed."""
        try:
            readable, _, _ = select.select([client.sock], [], [], 0)
            if readable:
                client.answer = client.sock.recv(4096)
            else:
                client.sock.sendall(b"a")
                return
        except OSError:
            pass
        client.dropped_after = time.monotonic() - client.opened

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=ROUND_TIMEOUT)
        for client in self.clients:
            client.sock.close()


@contextlib.contextmanager
def trickling(
    port: int, source: str = "127.0.0.1", opening: bytes = SLOW_HEADERS
) -> Iterator[Trickle]:
    """Slow clients to open on `port`, each sending `opening` and then one byte every
    TRICKLE_INTERVAL; all closed however the test ends."""
    trickle = Trickle(port, source, opening)
    trickle.start()
    try:
        yield trickle
    finally:
        trickle.stop()


def answers(url: str) -> bool:
    """Does a normal call get its answer within CALL_TIMEOUT?"""
    try:
        return requests.get(url + "/hello.py", timeout=CALL_TIMEOUT).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.parametrize(
    ("workers", "env", "threads"),
    [
        (DEFAULT_WORKERS, {}, DEFAULT_THREADS),  # `scriptgate serve` as shipped: 24
        (2, {"THREADS": "3"}, 3),
        (2, {"WORKER_CLASS": "sync"}, 1),
    ],
    ids=["default", "2x3", "sync"],
)
def test_serve_alone_stops_answering_at_one_slow_client_per_thread(
    tmp_path: Path, workers: int, env: dict[str, str], threads: int
) -> None:
    capacity = workers * threads
    scripts = make_scripts(tmp_path / "scripts")
    with gunicorn(scripts, tmp_path, workers=workers, env=env) as server:
        with trickling(server.port) as slow:
            slow.open(capacity - 1)
            slow.next_round()
            assert answers(server.url), f"{capacity - 1} slow clients leave one thread"
            slow.open(1)
            slow.next_round()
            assert not answers(server.url), f"{capacity} slow clients hold every thread"
            assert not slow.dropped()  # gunicorn never lets one go
        # The slow clients gone, the same server answers again.
        wait_until(lambda: answers(server.url), timeout=10, what="an answer once they left")


def test_gunicorns_worker_timeout_does_not_free_threads_held_by_slow_clients(
    tmp_path: Path,
) -> None:
    """Its worker timeout is a heartbeat of the worker's main loop, which keeps beating
    while the threads wait for headers; gunicorn has no header read timeout."""
    env = {"THREADS": "2", "SCRIPT_TIMEOUT": "1", "MAX_SCRIPT_TIMEOUT": "2"}
    worker_timeout = Settings(tmp_path, max_script_timeout=2).worker_timeout  # 12 s
    scripts = make_scripts(tmp_path / "scripts")
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server, trickling(server.port) as slow:
        workers = server.worker_pids()
        slow.open(2)
        slow.next_round()
        stuck_until = time.monotonic() + worker_timeout + CALL_TIMEOUT
        while time.monotonic() < stuck_until:  # each turn takes CALL_TIMEOUT: 5 turns
            assert not answers(server.url)
        assert server.worker_pids() == workers  # not recycled either
        assert not slow.dropped()


@needs_apache
def test_apache_answers_past_slow_clients_and_drops_them_at_its_header_timeout(
    tmp_path: Path,
) -> None:
    count = 2 * DEFAULT_WORKERS * DEFAULT_THREADS  # 48: twice what stops `serve` alone
    scripts = make_scripts(tmp_path / "scripts")
    with (
        gunicorn(scripts, tmp_path, workers=DEFAULT_WORKERS, env={"TRUSTED_PROXIES": PROXY}) as s,
        apache.apache_front([f"127.0.0.1:{s.port}"], tmp_path) as url,
        trickling(urlsplit(url).port or 0, source=CLIENT) as slow,
    ):
        slow.open(count)
        # Calls for 8 s from the first client's connect, inside the header timeout. Bounded
        # by the clock, not a count of rounds: a call on a loaded machine may take seconds,
        # and rounds plus calls must not outlast the timeout they are to stay inside.
        inside = slow.clients[0].opened + HEADER_TIMEOUT - 2
        calls = 0
        while time.monotonic() < inside:  # each turn waits for one trickle round
            slow.next_round()
            assert not slow.dropped(), "every slow client is connected for every call"
            assert answers(url)
            calls += 1
        assert calls >= 2, f"only {calls} call(s) inside the header timeout"
        # Then Apache drops each of them with 408, at its header timeout.
        dropped = wait_until(
            lambda: len(slow.dropped()) == count and slow.dropped(),
            timeout=HEADER_TIMEOUT_MAX + 5,
            what=f"Apache to drop {count} slow clients",
        )
        assert {c.answer.split(b"\r\n", 1)[0] for c in dropped} == {b"HTTP/1.1 408 Request Timeout"}
        assert all(HEADER_TIMEOUT - 0.5 < c.dropped_after < HEADER_TIMEOUT_MAX for c in dropped)


EAT_SCRIPT = '''"""Reads its whole body."""


def main(request):
    return str(len(request.get_data()))
'''


def slow_body(sent_at_once: int) -> bytes:
    """A POST to eat.py whose 100000-byte body starts with `sent_at_once` bytes."""
    head = b"POST /eat.py HTTP/1.1\r\nHost: slow\r\nContent-Length: 100000\r\n\r\n"
    return head + b"a" * sent_at_once


@needs_apache
@pytest.mark.parametrize(
    ("sent_at_once", "shielded"),
    [(APACHE_PREFETCH // 2, True), (APACHE_PREFETCH + 1024, False)],
    ids=["inside-prefetch", "past-prefetch"],
)
def test_apache_shields_a_replica_from_slow_bodies_only_inside_its_prefetch(
    tmp_path: Path, sent_at_once: int, shielded: bool
) -> None:
    """Past the first 16 KiB, Apache passes a body on as it arrives: a client trickling
    the rest holds a replica's thread while the script reads it, for as long as
    RequestReadTimeout's body limit allows (20 s, 1 s more per 500 bytes received)."""
    threads = 2
    scripts = make_scripts(tmp_path / "scripts")
    (scripts / "eat.py").write_text(EAT_SCRIPT)
    env = {"TRUSTED_PROXIES": PROXY, "THREADS": str(threads)}
    with (
        gunicorn(scripts, tmp_path, workers=1, env=env) as server,
        apache.apache_front([f"127.0.0.1:{server.port}"], tmp_path) as url,
        trickling(urlsplit(url).port or 0, CLIENT, slow_body(sent_at_once)) as slow,
    ):
        slow.open(2 * threads)
        if shielded:
            for _ in range(4):
                slow.next_round()
                assert answers(url)
        else:
            wait_until(lambda: not answers(url), timeout=10, what="the replica's threads held")
        assert not slow.dropped()

"""A scale-out on one machine: the Kubernetes layout, on real processes.

Three `scriptgate serve` replicas and a `scriptgate jobs` process share one redis-server,
and serve one scripts folder kept by git-sync's own layout (tests/gitsync.py: a worktree
per revision and an atomically swapped link, driven by git), as the pods of
deploy/kubernetes do. Under steady traffic the branch moves five times. What a user
relies on: no call fails across the swaps, every replica serves the new revision from
the first call that starts after the swap (well within a sync period) and says so in
health and metrics, a script and its helper always come from one revision, and jobs and
rate limits are shared by the replicas.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bench.procs import jobs_command
from tests.gitsync import GitSync
from tests.redis_server import available, redis_server
from tests.servers import Gunicorn, gunicorn, wait_until

REPLICAS = 3
SWAPS = 5
CLIENTS = 4
SYNC_PERIOD = 15.0  # seconds: GITSYNC_PERIOD in deploy/kubernetes/base
CALLS_BETWEEN_SWAPS = 60  # answered calls between two swaps, over every replica
MAX_CALLS = 20_000  # a bound on the traffic, whatever happens
RUN_SECONDS = 120  # and on its time
JOB_KEY = "scale-out-jobs-key-0123456789"
LIMITED_KEY = "scale-out-limited-key-9876543210"
RATE_LIMIT = 10  # per minute, for LIMITED_KEY, across every replica


def scripts(generation: int) -> dict[str, str | None]:
    """Revision `generation` of the scripts: the script and its helper both carry it."""
    return {
        "rev.py": f"""
            from shared import GENERATION as HELPER
            GENERATION = {generation}
            def main(request):
                return {{"generation": GENERATION, "helper": HELPER}}
        """,
        "_lib/shared.py": f"GENERATION = {generation}\n",
        "api/job.py": """
            from shared import GENERATION
            ASYNC = True
            def main(request):
                return {"generation": GENERATION}
        """,
        "api/limited.py": 'def main(request):\n    return "ok"\n',
    }


def key_entry(key_id: str, secret: str, extra: str = "") -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return (
        f'[keys.{key_id}]\nowner = "{key_id}@example.com"\nhash = "sha256:{digest}"\n'
        f'scopes = ["api:*"]\n{extra}\n'
    )


@dataclass(frozen=True)
class Call:
    replica: int
    started: float  # time.monotonic() before the request was sent
    ended: float
    status: int
    generation: int | None
    helper: int | None


class Traffic:
    """CLIENTS threads calling /rev.py on the replicas in turn until stopped (bounded)."""

    def __init__(self, replicas: list[Gunicorn]) -> None:
        self.replicas = replicas
        self.calls: list[Call] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + RUN_SECONDS
        self._threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]

    def _client(self) -> None:
        session = requests.Session()
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            turn = next(self._turn)
            if turn >= MAX_CALLS:
                return
            replica = turn % len(self.replicas)
            started = time.monotonic()
            try:
                response = session.get(self.replicas[replica].url + "/rev.py", timeout=10)
                body = response.json() if response.status_code == 200 else {}
            except (requests.RequestException, ValueError) as exc:
                with self._lock:
                    self.errors.append(f"replica {replica}: {exc!r}")
                continue
            call = Call(
                replica,
                started,
                time.monotonic(),
                response.status_code,
                body.get("generation"),
                body.get("helper"),
            )
            with self._lock:
                self.calls.append(call)

    def count(self) -> int:
        with self._lock:
            return len(self.calls)

    @contextlib.contextmanager
    def running(self) -> Iterator[Traffic]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=15)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[GitSync, list[Gunicorn], str]]:
    """git-sync's layout at generation 0, Redis, three replicas and a jobs process."""
    if not available():
        pytest.fail("redis-server is missing: run make debs")
    sync = GitSync(tmp_path / "repo")
    sync.commit(scripts(0), "generation 0")
    sync.sync()
    keys = tmp_path / "keys.toml"
    keys.write_text(
        key_entry("jobs-bot", JOB_KEY)
        + key_entry("limited-bot", LIMITED_KEY, f'rate_limit = "{RATE_LIMIT}/minute"')
    )
    with contextlib.ExitStack() as stack, redis_server(tmp_path) as url:
        env = {
            "KEYS_FILE": str(keys),
            "REDIS_URL": url,
            "JOB_BROKER_URL": url,
            "JOB_WORKERS": "0",
            "SECRETS_DIR": "",
        }
        folders = [tmp_path / f"replica-{i}" for i in range(REPLICAS)]
        for folder in folders:
            folder.mkdir()
        replicas = [
            stack.enter_context(gunicorn(sync.link, folder, workers=2, env=env))
            for folder in folders
        ]
        jobs_dir = tmp_path / "jobs"
        jobs_dir.mkdir()
        jobs = stack.enter_context(jobs_command(sync.link, jobs_dir, env))
        yield sync, replicas, jobs


def wait_for_calls(traffic: Traffic, count: int) -> None:
    wait_until(lambda: traffic.count() >= count, timeout=60, what=f"{count} answered calls")


def test_five_swaps_under_traffic_fail_no_call_and_reach_every_replica_at_once(stack):
    sync, replicas, jobs = stack
    swaps: list[tuple[float, int, str]] = []  # (when the link moved, generation, revision)
    with Traffic(replicas).running() as traffic:
        wait_for_calls(traffic, CALLS_BETWEEN_SWAPS)
        for generation in range(1, SWAPS + 1):
            sync.commit(scripts(generation), f"generation {generation}")
            revision = sync.sync()  # keeps one stale worktree, as the manifests' timeout
            swaps.append((time.monotonic(), generation, revision))
            for replica in replicas:  # the revision is visible where an operator looks
                health = replica.get("/_platform/health").json()
                assert health["scripts_revision"] == revision
                assert replica.get("/_platform/routes").headers["X-Scripts-Revision"] == revision
                metric = f'scriptgate_scripts_revision_info{{revision="{revision}"}} 1.0'
                assert metric in replica.get("/_platform/metrics").text
            job_health = requests.get(jobs + "/_platform/health", timeout=10).json()
            assert job_health["scripts_revision"] == revision
            wait_for_calls(traffic, traffic.count() + CALLS_BETWEEN_SWAPS)
    calls = traffic.calls

    assert traffic.errors == []
    assert [c for c in calls if c.status != 200] == []
    assert all(c.generation == c.helper for c in calls), "a script and its helper disagree"
    reach = []
    for moved, generation, _ in swaps:
        after = [c for c in calls if c.started >= moved]
        assert all(c.generation is not None and c.generation >= generation for c in after)
        first_new = [
            min(c.ended for c in after if c.replica == r and c.generation == generation)
            for r in range(REPLICAS)
        ]
        reach.append(max(first_new) - moved)
    assert max(reach) < SYNC_PERIOD
    print(
        f"\nscale-out: {len(calls)} calls over {REPLICAS} replicas, "
        f"{sum(c.status != 200 for c in calls)} failed, {SWAPS} swaps; swap to every replica "
        f"serving the new revision: max {max(reach) * 1000:.0f} ms, "
        f"mean {sum(reach) / len(reach) * 1000:.0f} ms"
    )


def test_jobs_and_rate_limits_are_shared_by_the_replicas(stack):
    sync, replicas, _ = stack
    generation = 1
    revision = sync.commit(scripts(generation))
    sync.sync()
    headers = {"X-API-Key": JOB_KEY}
    started = replicas[0].get("/api/job.py", headers=headers)
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    wait_until(
        lambda: (
            replicas[1].get(f"/_platform/jobs/{job_id}", headers=headers).json()["state"]
            == "succeeded"
        ),
        timeout=30,
        interval=0.1,
        what="the job to succeed",
    )
    result = replicas[2].get(f"/_platform/jobs/{job_id}/result", headers=headers)
    assert result.json() == {"generation": generation}  # run on the revision being served
    assert sync.current() == revision

    limited = {"X-API-Key": LIMITED_KEY}
    statuses = [
        replicas[i % REPLICAS].get("/api/limited.py", headers=limited).status_code
        for i in range(RATE_LIMIT + 5)
    ]
    assert statuses.count(200) == RATE_LIMIT and statuses.count(429) == 5

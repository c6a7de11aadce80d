"""A scale-out on one machine: the Kubernetes layout, on real processes.

Three `scriptgate serve` replicas and a `scriptgate jobs` process share one redis-server.
Each has its own scripts folder kept in git-sync's layout by a sync loop of its own
(tests/gitsync.py: a worktree per revision and an atomically swapped link, driven by
git, every SYNC_PERIOD from its own phase), as each pod of deploy/kubernetes has its
sidecar. Under steady traffic five commits land upstream. What a user relies on: no call
fails, every replica serves a commit within one sync period of it landing (and from the
first call after its own swap), says which in health, routes and metrics, a script and
its helper always come from one revision, and jobs and rate limits are shared.
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
from tests.gitsync import GitSync, Sidecar, Upstream
from tests.redis_server import available, redis_server
from tests.servers import Gunicorn, gunicorn, wait_until

REPLICAS = 3
COMMITS = 5
CLIENTS = 4
SYNC_PERIOD = 1.0  # seconds: GITSYNC_PERIOD, shortened (15 s in deploy/kubernetes)
CALLS_AFTER_SYNC = 60  # answered calls after every pod synced a commit, over every replica
MAX_CALLS = 20_000  # a bound on the traffic, whatever happens
RUN_SECONDS = 120  # and on its time
MAX_SYNCS = int(RUN_SECONDS / SYNC_PERIOD)
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


@dataclass
class Stack:
    upstream: Upstream
    replicas: list[Gunicorn]
    sidecars: list[Sidecar]  # one per replica, then the jobs process's
    jobs: str  # the jobs process's platform plane


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Generation 0 upstream, Redis, three replicas and a jobs process, each with its
    own git-sync folder and sync loop."""
    if not available():
        pytest.fail("redis-server is missing: run make debs")
    upstream = Upstream(tmp_path / "upstream")
    upstream.commit(scripts(0), "generation 0")
    pods = [GitSync(tmp_path / f"git-{i}", upstream) for i in range(REPLICAS + 1)]
    for pod in pods:
        pod.sync()  # the first checkout, before the server starts (the startup probe)
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
        folders = [tmp_path / f"replica-{i}" for i in range(REPLICAS + 1)]
        for folder in folders:
            folder.mkdir()
        replicas = [
            stack.enter_context(gunicorn(pod.link, folder, workers=2, env=env))
            for pod, folder in zip(pods[:REPLICAS], folders, strict=False)
        ]
        jobs = stack.enter_context(jobs_command(pods[-1].link, folders[-1], env))
        sidecars = [
            Sidecar(pod, SYNC_PERIOD, phase=i * SYNC_PERIOD / len(pods), max_syncs=MAX_SYNCS)
            for i, pod in enumerate(pods)
        ]
        for sidecar in sidecars:
            sidecar.start()
            stack.callback(sidecar.stop)
        yield Stack(upstream, replicas, sidecars, jobs)


def wait_for_calls(traffic: Traffic, count: int) -> None:
    wait_until(lambda: traffic.count() >= count, timeout=60, what=f"{count} answered calls")


def test_five_commits_under_traffic_fail_no_call_and_reach_every_replica_in_a_period(stack):
    landed: list[tuple[float, int, str]] = []  # (when it was committed, generation, revision)
    with Traffic(stack.replicas).running() as traffic:
        wait_for_calls(traffic, CALLS_AFTER_SYNC)
        for generation in range(1, COMMITS + 1):
            revision = stack.upstream.commit(scripts(generation), f"generation {generation}")
            landed.append((time.monotonic(), generation, revision))
            wait_until(
                lambda rev=revision: all(rev in s.swapped for s in stack.sidecars),
                timeout=10 * SYNC_PERIOD,
                what=f"every pod to sync {revision}",
            )
            for replica in stack.replicas:  # visible where an operator looks
                health = replica.get("/_platform/health").json()
                assert health["scripts_revision"] == revision
                assert replica.get("/_platform/routes").headers["X-Scripts-Revision"] == revision
                metric = f'scriptgate_scripts_revision_info{{revision="{revision}"}} 1.0'
                assert metric in replica.get("/_platform/metrics").text
            job_health = requests.get(stack.jobs + "/_platform/health", timeout=10).json()
            assert job_health["scripts_revision"] == revision
            wait_for_calls(traffic, traffic.count() + CALLS_AFTER_SYNC)
    calls = traffic.calls

    assert traffic.errors == []
    assert [s.errors for s in stack.sidecars] == [[]] * len(stack.sidecars)
    assert [c for c in calls if c.status != 200] == []
    assert all(c.generation == c.helper for c in calls), "a script and its helper disagree"
    from_commit, from_swap, waited = [], [], []
    for committed, generation, revision in landed:
        for r in range(REPLICAS):
            sidecar = stack.sidecars[r]
            swapped = sidecar.swapped[revision]
            after = [c for c in calls if c.replica == r and c.started >= swapped]
            assert all(c.generation is not None and c.generation >= generation for c in after)
            serving = min(c.ended for c in after if c.generation == generation)
            from_swap.append(serving - swapped)
            from_commit.append(serving - committed)
            waited.append(serving - committed - sidecar.git_work[revision])
    # Scriptgate's share: the first call after a swap already runs the new revision.
    assert max(from_swap) < SYNC_PERIOD
    # Every replica within a sync period of the commit, git's own work aside (the slack is
    # for thread wake-ups on a busy machine).
    assert max(waited) < SYNC_PERIOD + 0.5
    print(
        f"\nscale-out: {len(calls)} calls over {REPLICAS} replicas, "
        f"{sum(c.status != 200 for c in calls)} failed, {COMMITS} commits; commit to a "
        f"replica serving it: max {max(from_commit) * 1000:.0f} ms (sync period "
        f"{SYNC_PERIOD * 1000:.0f} ms, {max(waited) * 1000:.0f} ms without git's work); "
        f"its swap to its first call on it: max "
        f"{max(from_swap) * 1000:.0f} ms, mean {sum(from_swap) / len(from_swap) * 1000:.0f} ms"
    )


def test_jobs_and_rate_limits_are_shared_by_the_replicas(stack):
    replicas = stack.replicas
    revision = stack.upstream.commit(scripts(1))
    wait_until(
        lambda: all(revision in s.swapped for s in stack.sidecars),
        timeout=10 * SYNC_PERIOD,
        what="every pod to sync",
    )
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
    assert result.json() == {"generation": 1}  # run by the jobs process, on the new revision

    limited = {"X-API-Key": LIMITED_KEY}
    statuses = [
        replicas[i % REPLICAS].get("/api/limited.py", headers=limited).status_code
        for i in range(RATE_LIMIT + 5)
    ]
    assert statuses.count(200) == RATE_LIMIT and statuses.count(429) == 5

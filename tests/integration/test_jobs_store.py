"""The job store's promises, against both back ends: the embedded SQLite file and a real
redis-server. A state changes only from the state its caller expects, so a cancel and a
start, or two workers, can never both win."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from service.jobs.queue import JobQueue
from service.jobs.store import FAILED, QUEUED, Ending, Job, JobQuery, Result, event_text

RETENTION = 3600.0


SAMPLE = {
    "state": QUEUED,
    "zone": "api",
    "script": "report.py",
    "method": "POST",
    "path": "/api/report.py",
    "owner": "someone@example.com",
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


def make_job(job_id: str, created_at: float | None = None) -> Job:
    """A queued job, created now unless `created_at` says otherwise."""
    return Job(id=job_id, created_at=time.time() if created_at is None else created_at, **SAMPLE)


def test_a_job_reads_back_as_written(queue: JobQueue) -> None:
    store = queue.store
    job = make_job("a" * 32)
    store.create(job, b'{"snapshot": 1}', time.time())
    assert store.get(job.id, time.time()) == job
    assert store.request_of(job.id) == b'{"snapshot": 1}'
    assert store.get("b" * 32, time.time()) is None


def test_exactly_one_of_many_claims_wins(queue: JobQueue) -> None:
    store = queue.store
    store.create(make_job("c" * 32), b"{}", time.time())
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda n: store.claim("c" * 32, f"w:{n}", time.time()), range(16)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1 and winners[0].state == "running"
    assert store.stats().running == 1 and store.stats().queued == 0


def test_cancel_of_a_queued_job_wins_against_a_later_claim(queue: JobQueue) -> None:
    store = queue.store
    store.create(make_job("d" * 32), b"{}", time.time())
    assert store.cancel("d" * 32, time.time(), RETENTION) == "cancelled"
    assert store.claim("d" * 32, "w:1", time.time()) is None
    job = store.get("d" * 32, time.time())
    assert job is not None and job.state == "cancelled" and job.expires_at is not None
    assert store.request_of("d" * 32) is None  # the snapshot is gone with the job's run


def test_cancel_of_a_running_job_asks_it_to_stop(queue: JobQueue) -> None:
    store = queue.store
    store.create(make_job("e" * 32), b"{}", time.time())
    store.claim("e" * 32, "w:1", time.time())
    assert not store.asked_to_stop("e" * 32)
    assert store.cancel("e" * 32, time.time(), RETENTION) == "running"
    assert store.asked_to_stop("e" * 32) and store.beat("e" * 32, time.time())
    assert store.finish("e" * 32, Ending("cancelled", time.time(), RETENTION, "cancelled"))
    assert not store.finish("e" * 32, Ending("succeeded", time.time(), RETENTION))  # once only
    assert store.cancel("e" * 32, time.time(), RETENTION) == "cancelled"


def test_a_result_keeps_status_headers_and_bytes(queue: JobQueue) -> None:
    store = queue.store
    store.create(make_job("f" * 32), b"{}", time.time())
    store.claim("f" * 32, "w:1", time.time())
    result = Result(201, (("Content-Type", "application/octet-stream"), ("X-A", "b")), bytes(256))
    assert store.finish("f" * 32, Ending("succeeded", time.time(), RETENTION, None, result))
    assert store.result("f" * 32) == result
    assert store.get("f" * 32, time.time()).result_status == 201


def test_jobs_past_retention_are_gone(queue: JobQueue) -> None:
    store = queue.store
    store.create(make_job("g" * 32), b"{}", time.time())
    store.claim("g" * 32, "w:1", time.time())
    store.finish("g" * 32, Ending("succeeded", time.time(), 1.0))
    assert store.get("g" * 32, time.time()) is not None
    assert store.get("g" * 32, time.time() + 2) is None
    store.sweep(time.time() + 2)  # SQLite deletes now; Redis has the key's TTL
    if queue.settings.job_broker_url:
        assert 0 < queue.huey.storage.conn.ttl("scriptgate.job." + "g" * 32) <= 1
    else:
        assert store.get("g" * 32, 0) is None


def test_lost_jobs_are_failed_once(queue: JobQueue) -> None:
    store = queue.store
    now = time.time()
    for job_id, worker in (("h" * 32, "host:1"), ("i" * 32, "host:2")):
        store.create(make_job(job_id), b"{}", time.time())
        store.claim(job_id, worker, now)
    lost = store.fail_lost(Ending(FAILED, now, RETENTION, "the job worker died"), "host:1", 0.0)
    assert [job.id for job in lost] == ["h" * 32]
    assert (lost[0].state, lost[0].error) == (FAILED, "the job worker died")
    store.beat("i" * 32, now - 120)  # no heartbeat for two minutes
    stale = store.fail_lost(Ending(FAILED, now, RETENTION, "lost"), None, now - 60)
    assert [job.id for job in stale] == ["i" * 32]
    assert store.fail_lost(Ending(FAILED, now, RETENTION, "lost"), "host:1", now) == []


def test_stats_count_and_age_the_queue(queue: JobQueue) -> None:
    store = queue.store
    now = time.time()
    store.create(make_job("j" * 32, now - 30), b"{}", time.time())
    store.create(make_job("k" * 32, now - 10), b"{}", time.time())
    store.create(make_job("l" * 32, now), b"{}", time.time())
    store.claim("l" * 32, "w:1", now)
    stats = store.stats()
    assert (stats.queued, stats.running) == (2, 1)
    assert stats.oldest_queued_at == pytest.approx(now - 30)


def test_submit_queues_the_id_for_huey(queue: JobQueue) -> None:
    job = make_job("m" * 32)
    queue.submit(job, b"{}")
    seen: list[str] = []
    queue.serve(seen.append)
    task = queue.huey.dequeue()
    queue.huey.execute(task)
    assert seen == [job.id]
    assert queue.huey.dequeue() is None


def every_page(store, query: JobQuery, now: float) -> list[str]:
    """Follow the pages to the end (bounded), returning the ids in order."""
    ids: list[str] = []
    for _ in range(100):
        page = store.list_jobs(query, now)
        ids += [job.id for job in page.jobs]
        if page.after is None:
            return ids
        query = replace(query, after=page.after)
    raise AssertionError("more than 100 pages")


def test_listing_pages_newest_first_through_ties_and_skips_expired_jobs(queue) -> None:
    store = queue.store
    now = time.time()
    same = now - 50  # three jobs created in the same instant: the id orders them
    made = [("n" * 31 + c, same) for c in "abc"] + [("o" * 32, now - 40), ("p" * 32, now - 60)]
    for job_id, created in made:
        store.create(replace(make_job(job_id, created), caller="alpha"), b"{}", now)
    store.create(replace(make_job("q" * 32, now - 45), caller="beta"), b"{}", now)
    store.claim("p" * 32, "w:1", now)
    store.finish("p" * 32, Ending(FAILED, now, 1.0, "boom"))  # kept for 1 s
    newest_first = ["o" * 32, "n" * 31 + "c", "n" * 31 + "b", "n" * 31 + "a", "p" * 32]
    assert every_page(store, JobQuery(limit=2, caller="alpha"), now) == newest_first
    assert every_page(store, JobQuery(limit=1, caller="alpha"), now + 5) == newest_first[:4]
    assert every_page(store, JobQuery(limit=50, state=FAILED), now) == ["p" * 32]
    assert every_page(store, JobQuery(limit=50, caller="beta"), now) == ["q" * 32]
    window = JobQuery(limit=50, since=same, until=now - 40)
    assert every_page(store, window, now) == ["q" * 32, *newest_first[1:4]]
    assert every_page(store, JobQuery(limit=50, zone="api", script="other.py"), now) == []


def test_an_idempotency_key_holds_one_job_per_caller(queue) -> None:
    store = queue.store
    now = time.time()
    first = replace(make_job("r" * 32), caller="alpha", idempotency_key="k1", fingerprint="f")
    assert store.create(first, b"{}", now) is None
    again = replace(first, id="s" * 32)
    assert store.create(again, b"{}", now).id == first.id
    assert store.get("s" * 32, now) is None  # nothing recorded for the second
    other = replace(again, caller="beta")
    assert store.create(other, b"{}", now) is None  # another caller's same key


def test_of_many_requests_with_one_idempotency_key_one_job_is_recorded(queue) -> None:
    store = queue.store
    now = time.time()
    first = replace(make_job("t" * 32), caller="alpha", idempotency_key="race", fingerprint="f")

    def create(n: int) -> str:
        job = replace(first, id=f"{n:032d}")
        held = store.create(job, b"{}", now)
        return job.id if held is None else held.id

    with ThreadPoolExecutor(8) as pool:
        answers = set(pool.map(create, range(16)))
    assert len(answers) == 1  # every request got the same job
    listed = store.list_jobs(JobQuery(limit=50, caller="alpha"), now).jobs
    assert [job.id for job in listed] == list(answers)  # and only it was recorded


def test_the_sweep_leaves_no_history_entry_of_an_expired_job(queue) -> None:
    store = queue.store
    now = time.time()
    store.create(replace(make_job("u" * 32, now - 10), caller="alpha"), b"{}", now)
    store.create(replace(make_job("v" * 32, now - 5), caller="alpha"), b"{}", now)
    store.claim("u" * 32, "w:1", now)
    store.finish("u" * 32, Ending(FAILED, now, 1.0, "boom"))
    if queue.settings.job_broker_url:  # what Redis does to the hash after its TTL
        queue.huey.storage.conn.delete("scriptgate.job." + "u" * 32)
    store.sweep(now + 2)
    assert every_page(store, JobQuery(limit=50, caller="alpha"), now + 2) == ["v" * 32]
    if queue.settings.job_broker_url:
        conn = queue.huey.storage.conn
        for index in ("scriptgate.jobs.created", "scriptgate.jobs.caller.alpha"):
            assert [m.decode() for m in conn.zrange(index, 0, -1)] == ["v" * 32]


def test_events_are_numbered_in_order_only_while_running_and_expire_with_the_job(queue) -> None:
    """A run's events: its state changes and what append() adds, numbered from 1; a line
    that comes after the final state is refused (it would follow the end); retention
    removes them with the record."""
    store = queue.store
    job_id = "h" * 32
    store.create(make_job(job_id), b"{}", time.time())
    assert not store.append(job_id, [event_text("log", {"message": "early"})], None)
    store.claim(job_id, "w:1", time.time())
    lines = [event_text("log", {"message": f"line {n}"}) for n in range(3)]
    assert store.append(job_id, lines, '{"fraction": 0.5, "message": "half"}')
    assert store.get(job_id, time.time()).progress == '{"fraction": 0.5, "message": "half"}'
    store.finish(job_id, Ending("succeeded", time.time(), 1.0))
    assert not store.append(job_id, [event_text("log", {"message": "late"})], None)
    events = store.events(job_id, 0, 100)
    assert [e.id for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.kind for e in events] == ["state", "state", "log", "log", "log", "state"]
    assert [e.data.get("state") for e in events if e.kind == "state"] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert [e.id for e in store.events(job_id, 2, 2)] == [3, 4]
    store.sweep(time.time() + 2)
    if queue.settings.job_broker_url:
        assert 0 < queue.huey.storage.conn.ttl("scriptgate.job_events." + job_id) <= 1
    else:
        assert store.events(job_id, 0, 100) == []


def test_a_deleted_job_leaves_no_events(queue) -> None:
    store = queue.store
    store.create(make_job("i" * 32), b"{}", time.time())
    store.delete("i" * 32)
    assert store.events("i" * 32, 0, 10) == []

"""A job's record: what was asked, by whom, where it stands, and its result.

The record lives next to huey's queue, in the same SQLite file or Redis database
(sqlite_store.py, redis_store.py), so every server sharing the queue sees every job.
huey keeps the queue and nothing else: its key-value API has no conditional update, so
it could not make "a queued job is cancelled" and "a worker starts it" exclude each
other; both stores here change a job's state only from the state the caller expects, in
one transaction (SQLite) or one Lua script (Redis).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from service.small import iso_z

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, TIMED_OUT, CANCELLED = "succeeded", "failed", "timed_out", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, CANCELLED)
CALL, RETRY, SCHEDULE = "call", "retry", "schedule"
TRIGGERS = (CALL, RETRY, SCHEDULE)
FINISHED = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED})


@dataclass(frozen=True)
class Result:
    """The response the synchronous call would have given."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Ending:
    """How a job ends: its final state, when, what it leaves, and for how long."""

    state: str
    at: float
    retention: float
    error: str | None = None
    result: Result | None = None

    @property
    def expires_at(self) -> float:
        return self.at + self.retention


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    zone: str
    script: str  # zone-relative path, as in metrics and logs
    method: str
    path: str  # the URL path that was called
    owner: str  # the owner of the caller's key ("" without a key): the script's
    # request.environ["scriptgate.caller_owner"]
    trace_id: str
    traceparent: str  # W3C context of the enqueueing span: the job's span is its child
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    worker: str | None = None  # host:pid of the job worker that ran it
    result_status: int | None = None
    result_headers: str | None = None  # JSON list of [name, value]
    caller: str = ""  # the key id that started it, "anonymous" without a key
    trigger: str = CALL
    attempt: int = 1  # this run's number, 1 for the first
    attempts: int = 1  # how many runs it may have in all (1 + RETRIES)
    query: str = "{}"  # JSON: the query as the request log line shows it (redacted)
    retry_of: str | None = None  # the run this one retries
    retried_as: str | None = None  # the run that retries this one
    idempotency_key: str | None = None  # SHA-256 of the caller's Idempotency-Key header
    fingerprint: str | None = None  # SHA-256 of method, path, query and body
    progress: str | None = None  # JSON {"fraction", "message"}: the script's last progress()

    def visible(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    oldest_queued_at: float | None


@dataclass(frozen=True)
class JobQuery:
    """One page of GET /_platform/jobs: newest first, from just after `after`
    ((created_at, id) of the last job of the previous page), filters ANDed."""

    limit: int
    caller: str | None = None
    zone: str | None = None
    script: str | None = None  # zone-relative, with `zone`
    state: str | None = None
    trigger: str | None = None
    since: float | None = None  # created at or after
    until: float | None = None  # created before
    after: tuple[float, str] | None = None

    def matches(self, job: Job) -> bool:
        """The filters, for a store that cannot ask its index for all of them."""
        wanted = (
            (self.caller, job.caller),
            (self.zone, job.zone),
            (self.script, job.script),
            (self.state, job.state),
            (self.trigger, job.trigger),
        )
        if any(want is not None and want != have for want, have in wanted):
            return False
        if self.since is not None and job.created_at < self.since:
            return False
        if self.until is not None and job.created_at >= self.until:
            return False
        return self.after is None or (job.created_at, job.id) < self.after


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    after: tuple[float, str] | None  # where the next page starts; None: no more


STATE, PROGRESS, LOG = "state", "progress", "log"
EVENT_KINDS = (STATE, PROGRESS, LOG)


@dataclass(frozen=True)
class Event:
    """One of a run's events, numbered from 1 in the order the store took them: the
    SSE `id`, so a client that reconnects with Last-Event-ID misses and repeats none."""

    id: int
    kind: str
    data: dict[str, Any]


def event_text(kind: str, data: Mapping[str, Any]) -> str:
    """An event as the stores keep it (one JSON text)."""
    return json.dumps({"kind": kind, "data": dict(data)}, separators=(",", ":"))


def event_from(number: int, text: str | bytes) -> Event:
    stored = json.loads(text)
    return Event(number, str(stored["kind"]), dict(stored["data"]))


def state_event(state: str, at: float, ending: Ending | None = None) -> str:
    """The `state` event a store writes with each change of a job's state."""
    data: dict[str, Any] = {"state": state, "at": iso_z(at)}
    if ending is not None:
        if ending.error:
            data["error"] = ending.error
        if ending.result is not None:
            data["status"] = ending.result.status
    return event_text(STATE, data)


COLUMNS = tuple(f.name for f in fields(Job))
_KINDS = {f.name: str(f.type) for f in fields(Job)}
# A record written before a field existed reads back with the field's default.
_DEFAULTS = {f.name: f.default for f in fields(Job) if f.default is not MISSING}


def job_from(record: Mapping[str, Any]) -> Job:
    """A Job from a SQLite row or a Redis hash (bytes, with "" for None)."""
    values: dict[str, Any] = {}
    for name in COLUMNS:
        raw = record.get(name)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        kind = _KINDS[name]
        if raw is None and name in _DEFAULTS:
            values[name] = _DEFAULTS[name]
        elif raw is None or (raw == "" and "None" in kind):
            values[name] = None
        elif kind.startswith("float"):
            values[name] = float(raw)
        elif kind.startswith("int"):
            values[name] = int(raw)
        elif kind == "bool":
            values[name] = str(raw) in ("1", "True")
        else:
            values[name] = raw
    return Job(**values)


def result_fields(result: Result | None) -> tuple[int | None, str | None, bytes | None]:
    """(status, headers as JSON, body) as the stores keep them."""
    if result is None:
        return None, None, None
    return result.status, json.dumps([list(pair) for pair in result.headers]), result.body


def result_from(status: Any, headers: Any, body: Any) -> Result | None:
    if status in (None, b"", ""):
        return None
    pairs = json.loads(headers or "[]")
    return Result(int(status), tuple((k, v) for k, v in pairs), bytes(body or b""))


class StoreError(Exception):
    """The job store could not be reached or answered with an error."""


class JobStore:
    """What the job endpoints, the job workers and the supervisor ask of a store."""

    def create(self, job: Job, request: bytes, now: float) -> Job | None:
        """Record a queued job. With an idempotency key that this caller's visible job
        already holds, record nothing and return that job instead."""
        raise NotImplementedError

    def get(self, job_id: str, now: float) -> Job | None:
        """The job, or None when unknown or past its retention."""
        raise NotImplementedError

    def request_of(self, job_id: str) -> bytes | None:
        """The request snapshot (snapshot.py), kept until the job finishes."""
        raise NotImplementedError

    def result(self, job_id: str) -> Result | None:
        raise NotImplementedError

    def claim(self, job_id: str, worker: str, now: float) -> Job | None:
        """queued -> running, for one worker only; None if cancelled or taken."""
        raise NotImplementedError

    def beat(self, job_id: str, now: float) -> bool:
        """A running job's heartbeat; True when its cancellation was asked for."""
        raise NotImplementedError

    def asked_to_stop(self, job_id: str) -> bool:
        """Read only, asked by the running job's worker a few times a second."""
        raise NotImplementedError

    def finish(self, job_id: str, ending: Ending) -> bool:
        """running -> a final state; False if it was not running (already finished)."""
        raise NotImplementedError

    def cancel(self, job_id: str, now: float, retention: float) -> str:
        """A queued job is cancelled at once; a running one is asked to stop.
        Returns the state after: cancelled, running (stop asked) or a final state."""
        raise NotImplementedError

    def delete(self, job_id: str) -> None:
        raise NotImplementedError

    def running_ids(self, worker: str | None, beat_before: float) -> list[str]:
        """Running jobs held by `worker`, or whose last heartbeat is older than
        `beat_before`: their job worker died, or their whole server did."""
        raise NotImplementedError

    def sweep(self, now: float) -> int:
        """Remove jobs past their retention; how many."""
        raise NotImplementedError

    def stats(self) -> QueueStats:
        raise NotImplementedError

    def mark_retried(self, job_id: str, retry_id: str) -> None:
        """A finished run points to the run that retries it."""
        raise NotImplementedError

    def append(self, job_id: str, events: Sequence[str], progress: str | None) -> bool:
        """Add a running job's events (event_text) after its last, and set its progress
        when given, in one write; False (nothing written) when it is not running."""
        raise NotImplementedError

    def events(self, job_id: str, after: int, limit: int) -> list[Event]:
        """The job's events numbered after `after`, oldest first, at most `limit`."""
        raise NotImplementedError

    def list_jobs(self, query: JobQuery, now: float) -> Page:
        """Jobs matching `query`, newest first (created_at, then id, descending): keyset
        pages, so a job created meanwhile never shifts or repeats a later page."""
        raise NotImplementedError

    def fail_lost(self, ending: Ending, worker: str | None, beat_before: float) -> list[Job]:
        """End the running jobs of a dead worker (or with a stale heartbeat) as `ending`."""
        lost = []
        for job_id in self.running_ids(worker, beat_before):
            if self.finish(job_id, ending):
                job = self.get(job_id, ending.at)
                if job is not None:
                    lost.append(job)
        return lost

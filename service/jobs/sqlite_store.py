# ruff: noqa: S608 - table and column names are this module's constants; values are bound.
"""Jobs in the SQLite file huey's SqliteHuey queues in (the default, one machine).

Every statement goes through huey's own connection and lock (`storage.db`), and every
state change is one `UPDATE ... WHERE state = <expected>` or one exclusive transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Any

from service.jobs.store import (
    CANCELLED,
    COLUMNS,
    QUEUED,
    RUNNING,
    Ending,
    Event,
    Job,
    JobQuery,
    JobStore,
    Page,
    QueueStats,
    Result,
    event_from,
    job_from,
    result_fields,
    result_from,
    state_event,
)

TABLE = "scriptgate_job"
EVENTS = "scriptgate_job_event"  # a run's state, progress and log events, numbered per job
DDL = (
    f"""create table if not exists {TABLE} (
        id text primary key, state text not null, zone text not null, script text not null,
        method text not null, path text not null, owner text not null,
        trace_id text not null, traceparent text not null, created_at real not null,
        started_at real, finished_at real, expires_at real, error text,
        cancel_requested integer not null default 0, worker text, result_status integer,
        result_headers text, heartbeat_at real, request blob, body blob,
        caller text not null default '', trigger text not null default 'call',
        attempt integer not null default 1, attempts integer not null default 1,
        query text not null default '{{}}', retry_of text, retried_as text,
        idempotency_key text, fingerprint text, progress text)""",
    f"""create table if not exists {EVENTS} (
        job_id text not null, seq integer not null, event text not null,
        primary key (job_id, seq)) without rowid""",
    f"create index if not exists {TABLE}_state on {TABLE} (state, created_at)",
    f"create index if not exists {TABLE}_expires on {TABLE} (expires_at)",
)
# Columns added since the table was first made: (name, declaration), added to an older
# file on open (two processes may both try: the second finds it there). Jobs recorded
# before have no caller (""): only `platform:jobs` sees them.
ADDED = (
    ("caller", "text not null default ''"),
    ("trigger", "text not null default 'call'"),
    ("attempt", "integer not null default 1"),
    ("attempts", "integer not null default 1"),
    ("query", "text not null default '{}'"),
    ("retry_of", "text"),
    ("retried_as", "text"),
    ("idempotency_key", "text"),
    ("fingerprint", "text"),
    ("progress", "text"),
)
# The listing's orders: every filter a listing may start from, then (created_at, id),
# so a page is one range of one index, read backwards (keyset, no OFFSET).
LISTING_INDEXES = (
    f"create index if not exists {TABLE}_created on {TABLE} (created_at, id)",
    f"create index if not exists {TABLE}_caller on {TABLE} (caller, created_at, id)",
    f"create index if not exists {TABLE}_caller_state on {TABLE} (caller, state, created_at, id)",
    f"create index if not exists {TABLE}_script on {TABLE} (zone, script, created_at, id)",
    f"create index if not exists {TABLE}_state_created on {TABLE} (state, created_at, id)",
    f"create index if not exists {TABLE}_trigger on {TABLE} (trigger, created_at, id)",
    f"create unique index if not exists {TABLE}_idempotency on {TABLE} "
    "(caller, idempotency_key) where idempotency_key is not null",
)
# JobQuery field -> column, for the equality filters.
_EQUALS = ("caller", "zone", "script", "state", "trigger")
_SELECT = f"select {', '.join(COLUMNS)} from {TABLE}"
_FINISH = (
    f"update {TABLE} set state = ?, finished_at = ?, expires_at = ?, error = ?, "
    "result_status = ?, result_headers = ?, body = ?, request = null "
    "where id = ? and state = ?"
)


def _values(ending: Ending) -> tuple:
    """The values _FINISH sets, in its order."""
    return (ending.state, ending.at, ending.expires_at, ending.error, *result_fields(ending.result))


def _add_events(cursor: Any, job_id: str, events: Sequence[str]) -> None:
    """After the job's last event, inside the caller's (exclusive) transaction."""
    cursor.execute(f"select coalesce(max(seq), 0) from {EVENTS} where job_id = ?", (job_id,))
    last = cursor.fetchone()[0]
    rows = [(job_id, last + n, text) for n, text in enumerate(events, 1)]
    cursor.executemany(f"insert into {EVENTS} (job_id, seq, event) values (?, ?, ?)", rows)


class SqliteJobStore(JobStore):
    def __init__(self, storage: Any) -> None:
        self.storage = storage  # huey.storage.SqliteStorage
        with storage.db(commit=True) as cursor:
            for statement in DDL:
                cursor.execute(statement)
            cursor.execute(f"pragma table_info({TABLE})")
            present = {row[1] for row in cursor.fetchall()}
            for name, declaration in ADDED:
                if name not in present:
                    with contextlib.suppress(sqlite3.OperationalError):
                        cursor.execute(f"alter table {TABLE} add column {name} {declaration}")
            if "caller" not in present:  # `owner` held a keyed hash then: not an owner
                cursor.execute(f"update {TABLE} set owner = ''")
            for statement in LISTING_INDEXES:
                cursor.execute(statement)

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.storage.sql(sql, params, results=True)  # type: ignore[no-any-return]

    def _change(self, sql: str, params: tuple) -> int:
        with self.storage.db(commit=True) as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount  # type: ignore[no-any-return]

    def create(self, job: Job, request: bytes, now: float) -> Job | None:
        names = (*COLUMNS, "request")
        values = (*(getattr(job, name) for name in COLUMNS), request)
        marks = ", ".join("?" * len(names))
        with self.storage.db(commit=True) as cursor:  # exclusive: one of two same keys wins
            if job.idempotency_key is not None:
                where = "caller = ? and idempotency_key = ?"
                cursor.execute(f"{_SELECT} where {where}", (job.caller, job.idempotency_key))
                row = cursor.fetchone()
                if row is not None:
                    held = job_from(dict(zip(COLUMNS, row, strict=True)))
                    if held.visible(now):
                        return held
                    cursor.execute(f"delete from {TABLE} where id = ?", (held.id,))  # expired
                    cursor.execute(f"delete from {EVENTS} where job_id = ?", (held.id,))
            cursor.execute(f"insert into {TABLE} ({', '.join(names)}) values ({marks})", values)
            _add_events(cursor, job.id, [state_event(QUEUED, job.created_at)])
        return None

    def get(self, job_id: str, now: float) -> Job | None:
        rows = self._rows(f"{_SELECT} where id = ?", (job_id,))
        job = job_from(dict(zip(COLUMNS, rows[0], strict=True))) if rows else None
        return job if job is not None and job.visible(now) else None

    def request_of(self, job_id: str) -> bytes | None:
        rows = self._rows(f"select request from {TABLE} where id = ?", (job_id,))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    def result(self, job_id: str) -> Result | None:
        sql = f"select result_status, result_headers, body from {TABLE} where id = ?"
        rows = self._rows(sql, (job_id,))
        return result_from(*rows[0]) if rows else None

    def claim(self, job_id: str, worker: str, now: float) -> Job | None:
        sql = (
            f"update {TABLE} set state = ?, started_at = ?, heartbeat_at = ?, worker = ? "
            "where id = ? and state = ?"
        )
        if not self._moved(sql, (RUNNING, now, now, worker, job_id, QUEUED), job_id, RUNNING, now):
            return None
        return self.get(job_id, now)

    def _moved(
        self,
        sql: str,
        params: tuple,
        job_id: str,
        state: str,
        at: float,
        ending: Ending | None = None,
    ) -> bool:
        """A state change and its `state` event, in one transaction; False if the job was
        not in the state `sql` expects."""
        with self.storage.db(commit=True) as cursor:
            cursor.execute(sql, params)
            if not cursor.rowcount:
                return False
            _add_events(cursor, job_id, [state_event(state, at, ending)])
            return True

    def beat(self, job_id: str, now: float) -> bool:
        with self.storage.db(commit=True) as cursor:
            cursor.execute(
                f"update {TABLE} set heartbeat_at = ? where id = ? and state = ?",
                (now, job_id, RUNNING),
            )
            cursor.execute(f"select cancel_requested from {TABLE} where id = ?", (job_id,))
            row = cursor.fetchone()
        return bool(row and row[0])

    def asked_to_stop(self, job_id: str) -> bool:
        rows = self._rows(f"select cancel_requested from {TABLE} where id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def finish(self, job_id: str, ending: Ending) -> bool:
        params = (*_values(ending), job_id, RUNNING)
        return self._moved(_FINISH, params, job_id, ending.state, ending.at, ending)

    def cancel(self, job_id: str, now: float, retention: float) -> str:
        with self.storage.db(commit=True) as cursor:
            cursor.execute(f"select state from {TABLE} where id = ?", (job_id,))
            row = cursor.fetchone()
            state = row[0] if row else ""
            if state == QUEUED:
                ending = Ending(CANCELLED, now, retention, "cancelled")
                cursor.execute(_FINISH, (*_values(ending), job_id, QUEUED))
                _add_events(cursor, job_id, [state_event(CANCELLED, now, ending)])
                return CANCELLED
            if state == RUNNING:
                cursor.execute(f"update {TABLE} set cancel_requested = 1 where id = ?", (job_id,))
            return state  # type: ignore[no-any-return]

    def delete(self, job_id: str) -> None:
        with self.storage.db(commit=True) as cursor:
            cursor.execute(f"delete from {TABLE} where id = ?", (job_id,))
            cursor.execute(f"delete from {EVENTS} where job_id = ?", (job_id,))

    def running_ids(self, worker: str | None, beat_before: float) -> list[str]:
        sql = f"select id from {TABLE} where state = ? and (worker = ? or heartbeat_at < ?)"
        return [row[0] for row in self._rows(sql, (RUNNING, worker, beat_before))]

    def sweep(self, now: float) -> int:
        """Jobs past their retention, with their events (logs, progress), in one go."""
        with self.storage.db(commit=True) as cursor:
            cursor.execute(
                f"delete from {EVENTS} where job_id in "
                f"(select id from {TABLE} where expires_at <= ?)",
                (now,),
            )
            cursor.execute(f"delete from {TABLE} where expires_at <= ?", (now,))
            return cursor.rowcount  # type: ignore[no-any-return]

    def stats(self) -> QueueStats:
        sql = (
            f"select state, count(*), min(created_at) from {TABLE} "
            "where state in (?, ?) group by state"
        )
        found = {row[0]: row[1:] for row in self._rows(sql, (QUEUED, RUNNING))}
        queued, oldest = found.get(QUEUED, (0, None))
        return QueueStats(queued, found.get(RUNNING, (0, None))[0], oldest)

    def mark_retried(self, job_id: str, retry_id: str) -> None:
        self._change(f"update {TABLE} set retried_as = ? where id = ?", (retry_id, job_id))

    def append(self, job_id: str, events: Sequence[str], progress: str | None) -> bool:
        with self.storage.db(commit=True) as cursor:
            cursor.execute(f"select state from {TABLE} where id = ?", (job_id,))
            row = cursor.fetchone()
            if row is None or row[0] != RUNNING:
                return False
            if progress is not None:
                cursor.execute(f"update {TABLE} set progress = ? where id = ?", (progress, job_id))
            _add_events(cursor, job_id, events)
            return True

    def events(self, job_id: str, after: int, limit: int) -> list[Event]:
        sql = f"select seq, event from {EVENTS} where job_id = ? and seq > ? order by seq limit ?"
        return [event_from(seq, text) for seq, text in self._rows(sql, (job_id, after, limit))]

    def list_jobs(self, query: JobQuery, now: float) -> Page:
        where = ["(expires_at is null or expires_at > ?)"]
        params: list[object] = [now]
        for name in _EQUALS:
            value = getattr(query, name)
            if value is not None:
                where.append(f"{name} = ?")
                params.append(value)
        if query.since is not None:
            where.append("created_at >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("created_at < ?")
            params.append(query.until)
        if query.after is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend(query.after)
        sql = f"{_SELECT} where {' and '.join(where)} order by created_at desc, id desc limit ?"
        rows = self._rows(sql, (*params, query.limit + 1))
        jobs = [job_from(dict(zip(COLUMNS, row, strict=True))) for row in rows]
        more = len(jobs) > query.limit
        jobs = jobs[: query.limit]
        return Page(jobs, (jobs[-1].created_at, jobs[-1].id) if more else None)

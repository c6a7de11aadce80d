"""Jobs in the Redis database huey's RedisHuey queues in (several servers, one queue).

A job is one hash; two sorted sets index the queued jobs (by creation time: queue depth
and age) and the running ones (by last heartbeat: lost workers). Each state change is
one Lua script, so it is atomic against every other server. A finished job's hash gets
a TTL of JOB_RETENTION: Redis removes it, no sweep needed.

The run history (GET /_platform/jobs) reads two more sorted sets by creation time: every
job, and each caller's jobs. The other filters are applied to the hashes read, at most
SCAN_LIMIT per page, inside Redis (one Lua script a page: only the matching records
cross the network): a rare filter over many runs answers a short page with a `next`
cursor rather than read the whole history in one request. An index entry whose hash has
expired is dropped when a listing meets it, and by the supervisor's sweep (the oldest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.jobs import store
from service.jobs.redis_lua import APPEND, ASK_STOP, CLAIM, FINISH, HOLD, LIST
from service.jobs.store import Ending, Event, Job, JobQuery, Page, QueueStats, Result

PREFIX = "scriptgate.job."
QUEUED_SET = "scriptgate.jobs.queued"
RUNNING_SET = "scriptgate.jobs.running"
CREATED_SET = "scriptgate.jobs.created"
CALLER_SET = "scriptgate.jobs.caller."  # + the caller's key id
EVENTS = "scriptgate.job_events."  # + job id: a list, event n at index n - 1
IDEMPOTENCY = "scriptgate.idempotency."  # + caller + "." + key hash: the job id
# How long an Idempotency-Key is remembered beyond JOB_RETENTION: a job is expected to
# have finished by then (its record lives JOB_RETENTION after it finishes).
IDEMPOTENCY_MARGIN = 86400
SCAN_LIMIT = 2000  # index entries read for one page, at most
PRUNE_BATCH = 1000  # the oldest index entries checked by a sweep, per index
_BATCH = 200


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class RedisJobStore(store.JobStore):
    def __init__(self, conn: Any, retention: float = 0.0) -> None:
        self.conn = conn  # huey's redis.Redis client: same database, same pool
        self.idempotency_ttl = int(retention) + IDEMPOTENCY_MARGIN
        self._claim = conn.register_script(CLAIM)
        self._finish = conn.register_script(FINISH)
        self._ask_stop = conn.register_script(ASK_STOP)
        self._hold = conn.register_script(HOLD)
        self._append = conn.register_script(APPEND)
        self._list = conn.register_script(LIST)

    def _keys(self, job_id: str) -> list[str]:
        return [PREFIX + job_id, QUEUED_SET, RUNNING_SET, EVENTS + job_id]

    def create(self, job: Job, request: bytes, now: float) -> Job | None:
        record: dict[str, Any] = {name: _text(getattr(job, name)) for name in store.COLUMNS}
        record["cancel_requested"] = "0"
        record["request"] = request
        pipe = self.conn.pipeline(transaction=True)
        pipe.hset(PREFIX + job.id, mapping=record)
        pipe.zadd(QUEUED_SET, {job.id: job.created_at})
        pipe.zadd(CREATED_SET, {job.id: job.created_at})
        pipe.zadd(CALLER_SET + job.caller, {job.id: job.created_at})
        pipe.rpush(EVENTS + job.id, store.state_event(store.QUEUED, job.created_at))
        pipe.execute()
        if job.idempotency_key is None:
            return None
        # Recorded first, then the key taken: of two requests with one key, the second
        # finds the first's job already there, and takes its own back.
        name = f"{IDEMPOTENCY}{job.caller}.{job.idempotency_key}"
        holder = self._hold(keys=[name], args=[job.id, self.idempotency_ttl, PREFIX])
        if holder is None:
            return None
        held = self.get(holder.decode(), now)
        self.delete(job.id)
        if held is None:  # expired between the two reads: answer as if never held
            raise store.StoreError("idempotency key changed hands; send again")
        return held

    def get(self, job_id: str, now: float) -> Job | None:
        values = self.conn.hmget(PREFIX + job_id, store.COLUMNS)
        if values[0] is None:
            return None
        job = store.job_from(dict(zip(store.COLUMNS, values, strict=True)))
        return job if job.visible(now) else None

    def request_of(self, job_id: str) -> bytes | None:
        return self.conn.hget(PREFIX + job_id, "request")  # type: ignore[no-any-return]

    def result(self, job_id: str) -> Result | None:
        fields = ("result_status", "result_headers", "body")
        return store.result_from(*self.conn.hmget(PREFIX + job_id, fields))

    def claim(self, job_id: str, worker: str, now: float) -> Job | None:
        event = store.state_event(store.RUNNING, now)
        if not self._claim(keys=self._keys(job_id), args=[job_id, now, worker, event]):
            return None
        return self.get(job_id, now)

    def beat(self, job_id: str, now: float) -> bool:
        pipe = self.conn.pipeline(transaction=False)
        pipe.zadd(RUNNING_SET, {job_id: now}, xx=True)
        pipe.hget(PREFIX + job_id, "cancel_requested")
        return pipe.execute()[1] == b"1"  # type: ignore[no-any-return]

    def asked_to_stop(self, job_id: str) -> bool:
        return self.conn.hget(PREFIX + job_id, "cancel_requested") == b"1"  # type: ignore[no-any-return]

    def _end(self, job_id: str, expected: str, ending: Ending) -> bool:
        status, headers, body = store.result_fields(ending.result)
        args = [job_id, expected, ending.state, ending.at, ending.expires_at]
        args += [max(1, int(ending.retention)), _text(ending.error), _text(status)]
        args += [_text(headers), body or b"", store.state_event(ending.state, ending.at, ending)]
        return bool(self._finish(keys=self._keys(job_id), args=args))

    def finish(self, job_id: str, ending: Ending) -> bool:
        return self._end(job_id, store.RUNNING, ending)

    def cancel(self, job_id: str, now: float, retention: float) -> str:
        if self._end(job_id, store.QUEUED, Ending(store.CANCELLED, now, retention, "cancelled")):
            return store.CANCELLED
        state = self._ask_stop(keys=[PREFIX + job_id])
        return state.decode() if isinstance(state, bytes) else str(state)

    def delete(self, job_id: str) -> None:
        caller, key = self.conn.hmget(PREFIX + job_id, ("caller", "idempotency_key"))
        held = None
        if caller is not None and key:
            held = f"{IDEMPOTENCY}{caller.decode()}.{key.decode()}"
            if self.conn.get(held) != job_id.encode():
                held = None  # another job's: a loser of the race lets the winner keep it
        pipe = self.conn.pipeline(transaction=True)
        pipe.delete(PREFIX + job_id, EVENTS + job_id)
        pipe.zrem(QUEUED_SET, job_id)
        pipe.zrem(CREATED_SET, job_id)
        if caller is not None:
            pipe.zrem(CALLER_SET + caller.decode(), job_id)
        if held is not None:
            pipe.delete(held)
        pipe.execute()

    def running_ids(self, worker: str | None, beat_before: float) -> list[str]:
        stale = self.conn.zrangebyscore(RUNNING_SET, "-inf", f"({beat_before}")
        found = {job_id.decode() for job_id in stale}
        if worker is not None:
            for job_id in self.conn.zrange(RUNNING_SET, 0, -1):
                if self.conn.hget(PREFIX + job_id.decode(), "worker") == worker.encode():
                    found.add(job_id.decode())
        return sorted(found)

    def sweep(self, now: float) -> int:
        """Finished jobs carry a TTL; what is left is their history index entries,
        the oldest of each index checked here (at most PRUNE_BATCH a sweep each)."""
        indexes = [CREATED_SET, *self.conn.scan_iter(match=CALLER_SET + "*", count=500)]
        for index in indexes:
            oldest = self.conn.zrange(index, 0, PRUNE_BATCH - 1)
            if not oldest:
                continue
            pipe = self.conn.pipeline(transaction=False)
            for member in oldest:
                pipe.exists(PREFIX + member.decode())
            gone = [m for m, found in zip(oldest, pipe.execute(), strict=True) if not found]
            if gone:
                self.conn.zrem(index, *gone)
        return 0  # no job removed: Redis expired them

    def stats(self) -> QueueStats:
        pipe = self.conn.pipeline(transaction=False)
        pipe.zcard(QUEUED_SET)
        pipe.zrange(QUEUED_SET, 0, 0, withscores=True)
        pipe.zcard(RUNNING_SET)
        queued, oldest, running = pipe.execute()
        return QueueStats(int(queued), int(running), oldest[0][1] if oldest else None)

    def mark_retried(self, job_id: str, retry_id: str) -> None:
        if self.conn.exists(PREFIX + job_id):  # never re-create an expired hash
            self.conn.hset(PREFIX + job_id, "retried_as", retry_id)

    def append(self, job_id: str, events: Sequence[str], progress: str | None) -> bool:
        keys = [PREFIX + job_id, EVENTS + job_id]
        return bool(self._append(keys=keys, args=[progress or "", *events]))

    def events(self, job_id: str, after: int, limit: int) -> list[Event]:
        texts = self.conn.lrange(EVENTS + job_id, after, after + limit - 1)
        return [store.event_from(after + n, text) for n, text in enumerate(texts, 1)]

    def list_jobs(self, query: JobQuery, now: float) -> Page:
        index = CREATED_SET if query.caller is None else CALLER_SET + query.caller
        top = "+inf" if query.until is None else f"({query.until!r}"
        if query.after is not None:
            top = repr(query.after[0])  # inclusive: ties on created_at are cut by id
        bottom = "-inf" if query.since is None else repr(query.since)
        after_score, after_id = (
            ("", "") if query.after is None else (repr(query.after[0]), query.after[1])
        )
        wanted = (query.caller, query.zone, query.script, query.state, query.trigger)
        args = [top, bottom, after_score, after_id, query.limit, SCAN_LIMIT]
        args += [min(_BATCH, query.limit + 1), now, PREFIX]
        args += [_text(value) for value in wanted] + list(store.COLUMNS)
        reply = self._list(keys=[index], args=args)
        more, last_score, last_id, found = int(reply[0]), reply[1], reply[2], int(reply[3])
        width = len(store.COLUMNS)
        jobs = []
        for n in range(found):
            values = [None if v == b"\0" else v for v in reply[4 + n * width : 4 + (n + 1) * width]]
            jobs.append(store.job_from(dict(zip(store.COLUMNS, values, strict=True))))
        if more == 1:
            return Page(jobs, (jobs[-1].created_at, jobs[-1].id))
        if more == 2 and last_id:
            return Page(jobs, (float(last_score), last_id.decode()))
        return Page(jobs, None)

"""Schedule state and claims in the jobs' Redis database (several servers).

A schedule's state is a hash, listed in one set; a claim is a key taken with SET NX
(expiring after CLAIM_DAYS), in the same Lua script that checks and moves the
schedule's last handled time, so the claim is atomic against every other server. The
same script adds it to the sorted set of open claims (scored by when it was claimed);
`take_over` rescores it only while its score is still the one its lister saw, and
`record` removes it only for that holder (Lua scripts: compare-and-set).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from service.schedules.store import (
    CLAIM_DAYS,
    Claim,
    ScheduleState,
    ScheduleStore,
    schedule_key,
    script_key,
)

PREFIX = "scriptgate.schedule."  # + schedule_key: the state hash
INDEX = "scriptgate.schedules"  # every schedule_key
CLAIM = "scriptgate.schedule.claim."  # + schedule_key + "@" + due: the previous time
OPEN = "scriptgate.schedules.open"  # sorted set: schedule_key + "@" + due, by claimed at
PAUSED = "scriptgate.schedules.paused"  # hash: script_key -> paused at
_FLOATS = ("last_at", "last_run_at", "next_at", "last_success_at")

# KEYS: claim, state, open. ARGV: due, ttl, now, zone, script, cron, index, key, member.
_CLAIM = """
local last = redis.call('hget', KEYS[2], 'last_at')
if last and tonumber(last) >= tonumber(ARGV[1]) then return false end
if not redis.call('set', KEYS[1], last or ARGV[1], 'NX', 'EX', ARGV[2]) then return false end
redis.call('hset', KEYS[2], 'last_at', ARGV[1], 'zone', ARGV[4], 'script', ARGV[5], 'cron', ARGV[6])
redis.call('sadd', ARGV[7], ARGV[8])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[9])
return {last or ARGV[1], redis.call('hget', KEYS[2], 'last_job') or ''}
"""
# KEYS: open, state. ARGV: member, claimed at as listed, now.
_TAKE_OVER = """
local at = redis.call('zscore', KEYS[1], ARGV[1])
if not at or tonumber(at) ~= tonumber(ARGV[2]) then return false end
redis.call('zadd', KEYS[1], ARGV[3], ARGV[1])
return {redis.call('hget', KEYS[2], 'last_job') or ''}
"""
# KEYS: open, state. ARGV: member, claimed at, due, outcome, next at, job id ('' for none).
_RECORD = """
local at = redis.call('zscore', KEYS[1], ARGV[1])
if not at or tonumber(at) ~= tonumber(ARGV[2]) then return 0 end
redis.call('zrem', KEYS[1], ARGV[1])
if redis.call('exists', KEYS[2]) == 0 then return 1 end
local last = redis.call('hget', KEYS[2], 'last_run_at')
if last and tonumber(last) > tonumber(ARGV[3]) then return 1 end
redis.call('hset', KEYS[2], 'last_outcome', ARGV[4], 'last_run_at', ARGV[3], 'next_at', ARGV[5])
if ARGV[6] ~= '' then redis.call('hset', KEYS[2], 'last_job', ARGV[6]) end
return 1
"""
# KEYS: state. ARGV: job id, at, ok ("1"/"0"). Once per job.
_FINISHED = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if redis.call('hget', KEYS[1], 'counted_job') == ARGV[1] then return 0 end
redis.call('hset', KEYS[1], 'counted_job', ARGV[1])
if ARGV[3] == '1' then
  redis.call('hset', KEYS[1], 'failures', '0')
  local last = redis.call('hget', KEYS[1], 'last_success_at')
  if not last or tonumber(last) < tonumber(ARGV[2]) then
    redis.call('hset', KEYS[1], 'last_success_at', ARGV[2])
  end
else
  redis.call('hincrby', KEYS[1], 'failures', 1)
end
return 1
"""


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode()


def _member(key: str, due: float) -> str:
    return f"{key}@{due!r}"


class RedisScheduleStore(ScheduleStore):
    def __init__(self, conn: Any) -> None:
        self.conn = conn  # huey's redis.Redis client
        self._claim = conn.register_script(_CLAIM)
        self._take_over = conn.register_script(_TAKE_OVER)
        self._record = conn.register_script(_RECORD)
        self._finished = conn.register_script(_FINISHED)

    def _state(self, values: dict[bytes, bytes]) -> ScheduleState:
        text = {k.decode(): v.decode() for k, v in values.items()}
        floats = {name: float(text[name]) if text.get(name) else None for name in _FLOATS}
        return ScheduleState(
            zone=text["zone"],
            script=text["script"],
            cron=text["cron"],
            last_at=floats["last_at"] or 0.0,
            last_outcome=text.get("last_outcome", ""),
            last_job=text.get("last_job") or None,
            last_run_at=floats["last_run_at"],
            next_at=floats["next_at"],
            last_success_at=floats["last_success_at"],
            failures=int(text.get("failures") or 0),
        )

    def register(self, zone: str, script: str, cron: str, now: float) -> ScheduleState:
        key = schedule_key(zone, script, cron)
        pipe = self.conn.pipeline(transaction=True)
        pipe.hsetnx(PREFIX + key, "last_at", repr(now))
        pipe.hset(PREFIX + key, mapping={"zone": zone, "script": script, "cron": cron})
        pipe.sadd(INDEX, key)
        pipe.hgetall(PREFIX + key)
        return self._state(pipe.execute()[-1])

    def claim(self, zone: str, script: str, cron: str, due: float, now: float) -> Claim | None:
        key = schedule_key(zone, script, cron)
        member = _member(key, due)
        args = [repr(due), CLAIM_DAYS * 86400, repr(now), zone, script, cron, INDEX, key, member]
        found = self._claim(keys=[CLAIM + member, PREFIX + key, OPEN], args=args)
        if found is None:
            return None
        last, job = found
        return Claim(zone, script, cron, due, float(last), job.decode() if job else None, now)

    def open_claims(self, claimed_before: float) -> list[Claim]:
        found = []
        for member, claimed_at in self.conn.zrangebyscore(
            OPEN, "-inf", repr(claimed_before), withscores=True
        ):
            key, _, due = member.decode().rpartition("@")
            previous = self.conn.get(CLAIM + member.decode())
            zone, script, cron = json.loads(key)
            at = float(due)
            found.append(Claim(zone, script, cron, at, float(previous or at), None, claimed_at))
        return found

    def take_over(self, claim: Claim, now: float) -> Claim | None:
        key = schedule_key(*claim.label)
        args = [_member(key, claim.due), repr(claim.claimed_at), repr(now)]
        found = self._take_over(keys=[OPEN, PREFIX + key], args=args)
        if found is None:
            return None
        last_job = found[0].decode() or None
        return replace(claim, last_job=last_job, claimed_at=now, recovered=True)

    def record(self, claim: Claim, outcome: str, job_id: str | None, next_at: float) -> bool:
        key = schedule_key(*claim.label)
        args = [_member(key, claim.due), repr(claim.claimed_at), repr(claim.due), outcome]
        args += [repr(next_at), job_id or ""]
        return bool(self._record(keys=[OPEN, PREFIX + key], args=args))

    def set_next(self, zone: str, script: str, cron: str, next_at: float) -> None:
        key = PREFIX + schedule_key(zone, script, cron)
        if self.conn.exists(key):
            self.conn.hset(key, "next_at", repr(next_at))

    def finished(self, zone: str, script: str, cron: str, job_id: str, at: float, ok: bool) -> None:
        key = PREFIX + schedule_key(zone, script, cron)
        self._finished(keys=[key], args=[job_id, repr(at), "1" if ok else "0"])

    def states(self) -> list[ScheduleState]:
        keys = sorted(member.decode() for member in self.conn.smembers(INDEX))
        pipe = self.conn.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(PREFIX + key)
        found = []
        for values in pipe.execute():
            if values and b"zone" in values:
                found.append(self._state(values))
        return found

    def forget(self, zone: str, script: str, cron: str) -> None:
        key = schedule_key(zone, script, cron)
        claims = [m for m in self.conn.zrange(OPEN, 0, -1) if m.decode().startswith(key + "@")]
        pipe = self.conn.pipeline(transaction=True)
        pipe.delete(PREFIX + key)
        pipe.srem(INDEX, key)
        if claims:
            pipe.zrem(OPEN, *claims)
        pipe.execute()

    def paused(self) -> set[tuple[str, str]]:
        return {tuple(json.loads(k)) for k in self.conn.hkeys(PAUSED)}  # type: ignore[misc]

    def set_paused(self, zone: str, script: str, paused: bool, now: float) -> None:
        if paused:
            self.conn.hsetnx(PAUSED, script_key(zone, script), repr(now))
        else:
            self.conn.hdel(PAUSED, script_key(zone, script))

    def sweep(self, now: float) -> int:
        """Claims expire by themselves; an open one as old lost its schedule."""
        return int(self.conn.zremrangebyscore(OPEN, "-inf", repr(now - CLAIM_DAYS * 86400)))

"""Schedule state and claims in the jobs' Redis database (several servers).

A schedule's state is a hash, listed in one set; a claim is a key taken with SET NX
(expiring after CLAIM_DAYS), in the same Lua script that checks and moves the
schedule's last handled time, so the claim is atomic against every other server.
"""

from __future__ import annotations

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
CLAIM = "scriptgate.schedule.claim."  # + schedule_key + "@" + due
PAUSED = "scriptgate.schedules.paused"  # hash: script_key -> paused at
_FLOATS = ("last_at", "last_run_at", "next_at", "last_success_at")

# KEYS: claim, state. ARGV: due, ttl, now, zone, script, cron, index, key.
_CLAIM = """
local last = redis.call('hget', KEYS[2], 'last_at')
if last and tonumber(last) >= tonumber(ARGV[1]) then return false end
if not redis.call('set', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[2]) then return false end
redis.call('hset', KEYS[2], 'last_at', ARGV[1], 'zone', ARGV[4], 'script', ARGV[5], 'cron', ARGV[6])
redis.call('sadd', ARGV[7], ARGV[8])
return {last or ARGV[1], redis.call('hget', KEYS[2], 'last_job') or ''}
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


class RedisScheduleStore(ScheduleStore):
    def __init__(self, conn: Any) -> None:
        self.conn = conn  # huey's redis.Redis client
        self._claim = conn.register_script(_CLAIM)
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
        args = [repr(due), CLAIM_DAYS * 86400, repr(now), zone, script, cron, INDEX, key]
        found = self._claim(keys=[f"{CLAIM}{key}@{due!r}", PREFIX + key], args=args)
        if found is None:
            return None
        last, job = found
        return Claim(float(last), job.decode() if job else None)

    def record(
        self,
        zone: str,
        script: str,
        cron: str,
        due: float,
        outcome: str,
        job_id: str | None,
        next_at: float,
    ) -> None:
        fields = {"last_outcome": outcome, "last_run_at": repr(due), "next_at": repr(next_at)}
        if job_id is not None:
            fields["last_job"] = job_id
        self.conn.hset(PREFIX + schedule_key(zone, script, cron), mapping=fields)

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
        pipe = self.conn.pipeline(transaction=True)
        pipe.delete(PREFIX + key)
        pipe.srem(INDEX, key)
        pipe.execute()

    def paused(self) -> set[tuple[str, str]]:
        import json

        return {tuple(json.loads(k)) for k in self.conn.hkeys(PAUSED)}  # type: ignore[misc]

    def set_paused(self, zone: str, script: str, paused: bool, now: float) -> None:
        if paused:
            self.conn.hsetnx(PAUSED, script_key(zone, script), repr(now))
        else:
            self.conn.hdel(PAUSED, script_key(zone, script))

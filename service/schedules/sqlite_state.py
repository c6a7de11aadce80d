# ruff: noqa: S608 - table and column names are this module's constants; values are bound.
"""Schedule state and claims in the jobs' SQLite file (one machine).

Through huey's connection and lock, as the job store: `storage.db(commit=True)` is an
exclusive transaction, so a claim's check and insert are one step for every process
on the machine. A claim without its outcome yet is also a row of the small `_open`
table, which `take_over` moves to a new holder only while it still shows the claim time
its lister saw (compare-and-set), and `record` deletes only for that holder.
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
)

STATE = "scriptgate_schedule"
CLAIMS, PAUSED, OPEN = f"{STATE}_claim", f"{STATE}_paused", f"{STATE}_open"
DDL = (
    f"""create table if not exists {STATE} (
        key text primary key, zone text not null, script text not null, cron text not null,
        last_at real not null, last_outcome text not null default '', last_job text,
        last_run_at real, next_at real, last_success_at real,
        failures integer not null default 0, counted_job text)""",
    f"""create table if not exists {CLAIMS} (
        key text not null, due real not null, claimed_at real not null,
        primary key (key, due))""",
    f"""create table if not exists {PAUSED} (
        zone text not null, script text not null, paused_at real not null,
        primary key (zone, script))""",
    f"""create table if not exists {OPEN} (
        key text not null, due real not null, claimed_at real not null,
        previous real not null, primary key (key, due))""",
)
_COLUMNS = (
    "zone", "script", "cron", "last_at", "last_outcome", "last_job", "last_run_at", "next_at",
    "last_success_at", "failures",
)  # fmt: skip


class SqliteScheduleStore(ScheduleStore):
    def __init__(self, storage: Any) -> None:
        self.storage = storage  # huey.storage.SqliteStorage
        with storage.db(commit=True) as cursor:
            for statement in DDL:
                cursor.execute(statement)

    def _change(self, sql: str, params: tuple) -> int:
        with self.storage.db(commit=True) as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount  # type: ignore[no-any-return]

    def register(self, zone: str, script: str, cron: str, now: float) -> ScheduleState:
        key = schedule_key(zone, script, cron)
        with self.storage.db(commit=True) as cursor:
            cursor.execute(
                f"insert or ignore into {STATE} (key, zone, script, cron, last_at) "
                "values (?, ?, ?, ?, ?)",
                (key, zone, script, cron, now),
            )
            cursor.execute(f"select {', '.join(_COLUMNS)} from {STATE} where key = ?", (key,))
            row = cursor.fetchone()
        return ScheduleState(*row)

    def claim(self, zone: str, script: str, cron: str, due: float, now: float) -> Claim | None:
        key = schedule_key(zone, script, cron)
        with self.storage.db(commit=True) as cursor:
            cursor.execute(f"select last_at, last_job from {STATE} where key = ?", (key,))
            row = cursor.fetchone()
            if row is not None and row[0] >= due:
                return None
            cursor.execute(
                f"insert or ignore into {CLAIMS} (key, due, claimed_at) values (?, ?, ?)",
                (key, due, now),
            )
            if not cursor.rowcount:
                return None
            previous, last_job = (due, None) if row is None else (float(row[0]), row[1])
            cursor.execute(
                f"insert into {OPEN} (key, due, claimed_at, previous) values (?, ?, ?, ?)",
                (key, due, now, previous),
            )
            if row is None:  # forgotten meanwhile (the script was edited): back again
                insert = f"insert into {STATE} (key, zone, script, cron, last_at)"
                cursor.execute(f"{insert} values (?, ?, ?, ?, ?)", (key, zone, script, cron, due))
            else:
                cursor.execute(f"update {STATE} set last_at = ? where key = ?", (due, key))
        return Claim(zone, script, cron, due, previous, last_job, now)

    def open_claims(self, claimed_before: float) -> list[Claim]:
        sql = f"select key, due, claimed_at, previous from {OPEN} where claimed_at <= ?"
        found = []
        for key, due, claimed_at, previous in self.storage.sql(
            sql, (claimed_before,), results=True
        ):
            zone, script, cron = json.loads(key)
            found.append(Claim(zone, script, cron, due, previous, None, claimed_at))
        return found

    def take_over(self, claim: Claim, now: float) -> Claim | None:
        key = schedule_key(*claim.label)
        with self.storage.db(commit=True) as cursor:
            cursor.execute(
                f"update {OPEN} set claimed_at = ? where key = ? and due = ? and claimed_at = ?",
                (now, key, claim.due, claim.claimed_at),
            )
            if not cursor.rowcount:
                return None
            cursor.execute(f"select last_job from {STATE} where key = ?", (key,))
            row = cursor.fetchone()
        last_job = row[0] if row is not None else None
        return replace(claim, last_job=last_job, claimed_at=now, recovered=True)

    def record(self, claim: Claim, outcome: str, job_id: str | None, next_at: float) -> bool:
        key = schedule_key(*claim.label)
        with self.storage.db(commit=True) as cursor:
            cursor.execute(
                f"delete from {OPEN} where key = ? and due = ? and claimed_at = ?",
                (key, claim.due, claim.claimed_at),
            )
            if not cursor.rowcount:
                return False
            cursor.execute(
                f"update {STATE} set last_outcome = ?, last_run_at = ?, next_at = ?, "
                "last_job = coalesce(?, last_job) "
                "where key = ? and (last_run_at is null or last_run_at <= ?)",
                (outcome, claim.due, next_at, job_id, key, claim.due),
            )
        return True

    def set_next(self, zone: str, script: str, cron: str, next_at: float) -> None:
        sql = f"update {STATE} set next_at = ? where key = ?"
        self._change(sql, (next_at, schedule_key(zone, script, cron)))

    def finished(self, zone: str, script: str, cron: str, job_id: str, at: float, ok: bool) -> None:
        sql = (
            f"update {STATE} set counted_job = ?, "
            "failures = case when ? then 0 else failures + 1 end, "
            "last_success_at = case when ? then max(coalesce(last_success_at, 0), ?) "
            "else last_success_at end "
            "where key = ? and (counted_job is null or counted_job != ?)"
        )
        self._change(sql, (job_id, ok, ok, at, schedule_key(zone, script, cron), job_id))

    def states(self) -> list[ScheduleState]:
        rows = self.storage.sql(f"select {', '.join(_COLUMNS)} from {STATE}", results=True)
        return [ScheduleState(*row) for row in rows]

    def forget(self, zone: str, script: str, cron: str) -> None:
        key = schedule_key(zone, script, cron)
        with self.storage.db(commit=True) as cursor:
            cursor.execute(f"delete from {STATE} where key = ?", (key,))
            cursor.execute(f"delete from {OPEN} where key = ?", (key,))

    def paused(self) -> set[tuple[str, str]]:
        rows = self.storage.sql(f"select zone, script from {PAUSED}", results=True)
        return {(zone, script) for zone, script in rows}

    def set_paused(self, zone: str, script: str, paused: bool, now: float) -> None:
        if paused:
            sql = f"insert or ignore into {PAUSED} (zone, script, paused_at) values (?, ?, ?)"
            self._change(sql, (zone, script, now))
        else:
            self._change(f"delete from {PAUSED} where zone = ? and script = ?", (zone, script))

    def sweep(self, now: float) -> int:
        before = now - CLAIM_DAYS * 86400
        self._change(f"delete from {OPEN} where due < ?", (before,))
        return self._change(f"delete from {CLAIMS} where due < ?", (before,))

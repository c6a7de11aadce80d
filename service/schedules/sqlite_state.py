# ruff: noqa: S608 - table and column names are this module's constants; values are bound.
"""Schedule state and claims in the jobs' SQLite file (one machine).

Through huey's connection and lock, as the job store: `storage.db(commit=True)` is an
exclusive transaction, so a claim's check and insert are one step for every process
on the machine.
"""

from __future__ import annotations

from typing import Any

from service.schedules.store import (
    CLAIM_DAYS,
    Claim,
    ScheduleState,
    ScheduleStore,
    schedule_key,
)

STATE = "scriptgate_schedule"
CLAIMS, PAUSED = f"{STATE}_claim", f"{STATE}_paused"
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
            if row is None:  # forgotten meanwhile (the script was edited): back again
                insert = f"insert into {STATE} (key, zone, script, cron, last_at)"
                cursor.execute(f"{insert} values (?, ?, ?, ?, ?)", (key, zone, script, cron, due))
                return Claim(due, None)
            cursor.execute(f"update {STATE} set last_at = ? where key = ?", (due, key))
        return Claim(float(row[0]), row[1])

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
        sql = (
            f"update {STATE} set last_outcome = ?, last_run_at = ?, next_at = ?, "
            "last_job = coalesce(?, last_job) where key = ?"
        )
        self._change(sql, (outcome, due, next_at, job_id, schedule_key(zone, script, cron)))

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
        self._change(f"delete from {STATE} where key = ?", (schedule_key(zone, script, cron),))

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
        return self._change(f"delete from {CLAIMS} where due < ?", (now - CLAIM_DAYS * 86400,))

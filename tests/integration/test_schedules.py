"""Schedules on real gunicorn with its job supervisor, the scheduler's time set by the
test (SCHEDULE_TEST_CLOCK: a file holding the time, read every 50 ms), everything else
real: runners import the scripts, jobs run in job workers, the store is SQLite or a real
redis-server.

- two servers on one Redis give one run per scheduled minute, never zero, never two;
- a restart inside the catch-up window runs the missed time once; outside, it is
  recorded as missed and not run;
- a pause holds across a restart, and a resume lets the next time run;
- adding and deleting a script's file changes the schedules with no restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.procs import descendants, process_name
from tests.servers import Gunicorn, gunicorn, log_records, stays_the_same, wait_until

ADMIN_KEY = "sg_admin_schedules_0123456789abcdefghijklm"
ADMIN = {"X-Admin-Key": ADMIN_KEY}
# A Monday, 06:59:30 UTC: the next minute boundary 30 s ahead.
START = datetime(2026, 12, 7, 6, 59, 30, tzinfo=timezone.utc).timestamp()
MINUTE = 60.0


def tick_script(ticks: Path, cron: str) -> str:
    """A script that appends its job's id to `ticks`: one line per run."""
    return f'''"""Writes down each run."""
SCHEDULE = "{cron}"
SCHEDULE_PARAMS = {{"note": "scheduled"}}
def main(request, note: str = "called"):
    with open({str(ticks)!r}, "a") as f:
        f.write(request.environ["scriptgate.job_id"] + " " + note + "\\n")
    return {{"note": note}}
'''


class Setup:
    def __init__(self, tmp: Path, cron: str = "* * * * *") -> None:
        self.tmp = tmp
        self.scripts = tmp / "scripts"
        (self.scripts / "api").mkdir(parents=True)
        self.ticks = tmp / "ticks.txt"
        self.ticks.write_text("")
        (self.scripts / "api" / "tick.py").write_text(tick_script(self.ticks, cron))
        self.clock = tmp / "clock.txt"
        self.set_clock(START)
        self.env = {
            "JOB_WORKERS": "1",
            "ADMIN_API_KEY": ADMIN_KEY,
            "SCHEDULE_TEST_CLOCK": str(self.clock),
            "JOB_DATA_DIR": str(tmp / "data"),
        }

    def set_clock(self, moment: float) -> None:
        """Written whole, then renamed: the scheduler never reads half a number."""
        part = self.clock.with_suffix(".part")
        part.write_text(repr(moment))
        part.replace(self.clock)

    def runs(self) -> list[str]:
        return self.ticks.read_text().splitlines()

    @contextlib.contextmanager
    def server(self, name: str, **env: str) -> Iterator[Gunicorn]:
        folder = self.tmp / name
        folder.mkdir(exist_ok=True)
        with gunicorn(self.scripts, folder, workers=2, env={**self.env, **env}) as srv:
            yield srv


def schedule_records(*servers: Gunicorn, message: str = "schedule") -> list[dict]:
    return [r for r in log_records(*servers) if r.get("message") == message]


def scheduler_ready(*servers: Gunicorn, count: int = 1) -> None:
    """Each server's scheduler has found the schedule (and registered it)."""
    for server in servers:
        wait_until(
            lambda s=server: len(schedule_records(s, message="schedule found")) >= count,
            timeout=30,
            what="the scheduler to find the schedule",
        )


def runs_reach(setup: Setup, count: int) -> list[str]:
    return wait_until(
        lambda: len(setup.runs()) >= count and setup.runs(),
        timeout=30,
        what=f"{count} scheduled runs",
    )


def schedule_of(server: Gunicorn) -> dict:
    response = server.get("/_platform/schedules")
    assert response.status_code == 200, response.text
    [entry] = response.json()["schedules"]
    return entry


def counter(server: Gunicorn, outcome: str) -> float:
    text = server.get("/_platform/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "scriptgate_schedule_runs_total"
                and sample.labels.get("outcome") == outcome
                and sample.labels.get("script") == "tick.py"
            ):
                return sample.value
    return 0.0


def test_two_servers_on_one_redis_run_each_minute_once(tmp_path: Path, redis_url: str) -> None:
    setup = Setup(tmp_path)
    with (
        setup.server("one", JOB_BROKER_URL=redis_url) as one,
        setup.server("two", JOB_BROKER_URL=redis_url) as two,
    ):
        scheduler_ready(one, two)
        for minute in range(1, 6):
            setup.set_clock(START + 30 + (minute - 1) * MINUTE)
            runs_reach(setup, minute)
        assert stays_the_same(setup.ticks, 1.0)  # twenty clock reads by each: no second
        runs = setup.runs()
        assert len(runs) == 5 and len({r.split()[0] for r in runs}) == 5
        assert all(r.endswith(" scheduled") for r in runs)  # SCHEDULE_PARAMS reached it
        started = [r for r in schedule_records(one, two) if r["outcome"] == "started"]
        assert len(started) == 5
        jobs = two.get("/_platform/jobs?trigger=schedule", headers=ADMIN).json()["jobs"]
        assert sorted(j["id"] for j in jobs) == sorted(r.split()[0] for r in runs)
        assert {(j["caller"], j["trigger"], j["script"]) for j in jobs} == {
            ("schedule", "schedule", "/api/tick.py")
        }
        assert counter(one, "started") + counter(two, "started") == 5
        entry = schedule_of(one)
        assert entry["last_run"]["scheduled_at"] == "2026-12-07T07:04:00.000Z"
        assert entry["next_run"] == "2026-12-07T07:05:00.000Z"


def test_a_restart_inside_the_catchup_window_runs_the_missed_time_once(tmp_path: Path) -> None:
    setup = Setup(tmp_path, cron="0 7 * * *")
    with setup.server("first") as first:
        scheduler_ready(first)
    setup.set_clock(START + 30 + 30 * MINUTE)  # down over 07:00; back at 07:30
    with setup.server("second") as second:
        [run] = runs_reach(setup, 1)
        entry = schedule_of(second)
        assert entry["last_run"]["scheduled_at"] == "2026-12-07T07:00:00.000Z"
        assert entry["last_run"]["job_id"] == run.split()[0]
        wait_until(
            lambda: schedule_of(second)["last_run"]["state"] == "succeeded",
            timeout=30,
            what="the run to succeed",
        )
        assert stays_the_same(setup.ticks, 1.0)
    # Down over the next day's 07:00; back at 09:00, two hours late: recorded, not run.
    setup.set_clock(START + 30 + 26 * 3600)
    with setup.server("third") as third:
        missed = wait_until(
            lambda: [r for r in schedule_records(third) if r["outcome"] == "missed"],
            timeout=30,
            what="the missed time to be recorded",
        )
        assert missed[0]["scheduled_at"] == "2026-12-08T07:00:00.000Z"
        assert stays_the_same(setup.ticks, 1.0) and len(setup.runs()) == 1
        entry = schedule_of(third)
        assert entry["last_run"]["outcome"] == "missed" and entry["last_run"]["job_id"] is None
        assert counter(third, "missed") == 1


def test_a_pause_holds_across_a_restart(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    with setup.server("first") as first:
        scheduler_ready(first)
        answer = first.request("POST", "/_platform/schedules/api/tick.py/pause", headers=ADMIN)
        assert answer.status_code == 200 and answer.json()["schedules"][0]["paused"] is True
        refused = first.request("POST", "/_platform/schedules/api/tick.py/resume")
        assert refused.status_code == 401
    with setup.server("second") as second:
        scheduler_ready(second)
        assert schedule_of(second)["paused"] is True
        setup.set_clock(START + 30)
        skipped = wait_until(
            lambda: [r for r in schedule_records(second) if r["outcome"] == "skipped"],
            timeout=30,
            what="the paused time to be skipped",
        )
        assert skipped[0]["reason"] == "paused" and setup.runs() == []
        answer = second.request("POST", "/_platform/schedules/api/tick.py/resume", headers=ADMIN)
        assert answer.status_code == 200 and answer.json()["schedules"][0]["paused"] is False
        setup.set_clock(START + 30 + MINUTE)
        runs_reach(setup, 1)


def test_adding_and_deleting_a_file_changes_the_schedules(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    with setup.server("only") as server:
        scheduler_ready(server)
        other = setup.scripts / "api" / "other.py"
        other.write_text(tick_script(setup.ticks, "*/2 * * * *"))
        wait_until(
            lambda: len(server.get("/_platform/schedules").json()["schedules"]) == 2,
            timeout=30,
            what="the new schedule to be listed",
        )
        scheduler_ready(server, count=2)
        (setup.scripts / "api" / "tick.py").unlink()
        wait_until(
            lambda: schedule_records(server, message="schedule removed"),
            timeout=30,
            what="the deleted script's schedule to be removed",
        )
        setup.set_clock(START + 30)  # 07:00: other.py's */2 is due, tick.py is gone
        runs_reach(setup, 1)
        assert stays_the_same(setup.ticks, 1.0) and len(setup.runs()) == 1
        records = [r for r in schedule_records(server) if r["outcome"] == "started"]
        assert [r["script"] for r in records] == ["other.py"]


def scheduler_pids(server: Gunicorn) -> set[int]:
    return {p for p in descendants(server.proc.pid) if process_name(p) == "scriptgate-cron"}


def test_a_killed_scheduler_is_replaced_and_runs_the_next_time(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    with setup.server("only") as server:
        scheduler_ready(server)
        [first] = scheduler_pids(server)
        os.kill(first, signal.SIGKILL)
        [second] = wait_until(
            lambda: (found := scheduler_pids(server)) and first not in found and found,
            timeout=30,
            what="a new scheduler process",
        )
        scheduler_ready(server, count=2)  # the new one found the schedule too
        setup.set_clock(START + 30)
        runs_reach(setup, 1)
        assert stays_the_same(setup.ticks, 1.0) and len(setup.runs()) == 1
        assert scheduler_pids(server) == {second}


def test_of_many_claims_of_one_time_exactly_one_wins(schedule_store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    schedule_store.register("api", "tick.py", "* * * * *", START)
    due = START + 30
    with ThreadPoolExecutor(8) as pool:
        claims = list(
            pool.map(
                lambda _: schedule_store.claim("api", "tick.py", "* * * * *", due, due), range(16)
            )
        )
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1 and winners[0].previous == START and winners[0].last_job is None
    assert schedule_store.record(winners[0], "started", "j" * 32, due + 60)
    # An earlier time, once a later one was handled, is never claimed.
    assert schedule_store.claim("api", "tick.py", "* * * * *", due - 60, due) is None
    later = schedule_store.claim("api", "tick.py", "* * * * *", due + 60, due + 60)
    assert later is not None and later.previous == due and later.last_job == "j" * 32
    [state] = schedule_store.states()
    assert (state.last_at, state.last_outcome, state.next_at) == (due + 60, "started", due + 60)


def test_a_finished_run_is_counted_once_whoever_sees_it(schedule_store) -> None:
    schedule_store.register("api", "tick.py", "* * * * *", START)
    for _ in range(3):  # two schedulers, and a scan again: one count
        schedule_store.finished("api", "tick.py", "* * * * *", "a" * 32, START + 1, False)
    schedule_store.finished("api", "tick.py", "* * * * *", "b" * 32, START + 2, False)
    assert schedule_store.states()[0].failures == 2
    schedule_store.finished("api", "tick.py", "* * * * *", "c" * 32, START + 3, True)
    [state] = schedule_store.states()
    assert state.failures == 0 and state.last_success_at == START + 3
    schedule_store.set_paused("api", "tick.py", True, START)
    assert schedule_store.paused() == {("api", "tick.py")}
    schedule_store.forget("api", "tick.py", "* * * * *")
    assert schedule_store.states() == []

"""A scheduled time whose scheduler died between claim and job is never lost, and never
run twice: driven by a test clock over a real app (runners import the scripts, jobs are
recorded in the SQLite store). A dead scheduler is what it leaves in the store: a claim
taken through the store API, with no outcome. The same on real servers, killed and
stopped for real, with Redis too: tests/integration/test_schedule_recovery.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.jobs.store import JobQuery
from service.schedules.backends import open_store
from service.schedules.clock import ManualClock
from service.schedules.runs import start_job
from service.schedules.scheduler import Scheduler
from service.schedules.store import CLAIM_LEASE_SECONDS, MISSED, SKIPPED, STARTED, run_key
from tests.unit.conftest import log_records, write_scripts
from tests.unit.test_schedules import EVERY_MINUTE, MINUTE, START, every_minute_and

DUE = START + 30  # 07:00:00, the first time of `* * * * *` after START
TICK = ("api", "tick.py", "* * * * *")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def app_with(make_app, scripts_dir: Path, source: str = EVERY_MINUTE):
    write_scripts(scripts_dir, {"api/tick.py": source})
    return make_app()


def scheduler(app, clock: ManualClock) -> Scheduler:
    made = Scheduler(app.extensions["scriptgate"], clock)
    made.scan()
    return made


def store_of(app):
    return open_store(app.extensions["scriptgate"].jobs)


def jobs_of(app) -> list:
    store = app.extensions["scriptgate"].jobs.store
    return store.list_jobs(JobQuery(limit=50, trigger="schedule"), time.time()).jobs


def outcomes(app, message: str = "schedule") -> list[dict]:
    records = log_records(app.extensions["scriptgate"].settings.log_file)
    return [r for r in records if r.get("message") == message]


def dead_claim(app, due: float = DUE):
    """What a scheduler killed right after its claim leaves: the claim, no outcome."""
    claim = store_of(app).claim(*TICK, due, due)
    assert claim is not None
    return claim


def test_a_time_claimed_by_a_dead_scheduler_runs_once_after_the_lease(
    make_app, scripts_dir, clock
) -> None:
    app = app_with(make_app, scripts_dir)
    s = scheduler(app, clock)
    clock.set(DUE)
    dead_claim(app)
    s.step()  # the time is the dead one's: nothing yet
    clock.set(DUE + CLAIM_LEASE_SECONDS - 1)
    s.step()
    assert jobs_of(app) == []
    clock.set(DUE + CLAIM_LEASE_SECONDS)
    s.step()
    s.step()
    [job] = jobs_of(app)
    [started] = [r for r in outcomes(app) if r["outcome"] == STARTED]
    assert started["recovered"] is True and started["job_id"] == job.id
    assert started["scheduled_at"] == "2026-12-07T07:00:00.000Z"
    [state] = store_of(app).states()
    assert (state.last_outcome, state.last_run_at, state.last_job) == (STARTED, DUE, job.id)
    assert store_of(app).open_claims(clock.now() + 3600) == []


def test_two_recoverers_take_over_a_dead_claim_once(make_app, scripts_dir, clock) -> None:
    app = app_with(make_app, scripts_dir)
    first, second = scheduler(app, clock), scheduler(make_app(), clock)
    clock.set(DUE)
    dead_claim(app)
    clock.set(DUE + CLAIM_LEASE_SECONDS)
    second.step()
    first.step()
    assert len(jobs_of(app)) == 1
    assert len([r for r in outcomes(app) if r["outcome"] == STARTED]) == 1


def test_a_slow_holder_and_its_recoverer_make_one_job(make_app, scripts_dir, clock) -> None:
    """The holder was stuck, not dead: the recoverer creates the job, then the holder
    creates it too and gets the same one back; only the recoverer records it."""
    app = app_with(make_app, scripts_dir)
    rt = app.extensions["scriptgate"]
    slow = scheduler(app, clock)
    clock.set(DUE)
    claim = dead_claim(app)
    clock.set(DUE + CLAIM_LEASE_SECONDS)
    scheduler(make_app(), clock).step()
    [job] = jobs_of(app)
    entry = next(iter(slow.entries.values()))
    slow.settle(entry, claim, DUE, False)  # wakes up and carries on with its claim
    assert [j.id for j in jobs_of(app)] == [job.id]
    assert len([r for r in outcomes(app) if r["outcome"] == STARTED]) == 1
    [lost] = outcomes(app, "schedule claim taken over")
    assert lost["job_id"] == job.id and lost["scheduled_at"] == "2026-12-07T07:00:00.000Z"
    assert start_job(rt, entry.found, entry.cron, DUE) == (job.id, False)


def test_a_job_created_before_the_crash_is_the_one_recorded(make_app, scripts_dir, clock) -> None:
    """Killed after creating the job, before recording it: the recoverer finds that job."""
    app = app_with(make_app, scripts_dir)
    s = scheduler(app, clock)
    clock.set(DUE)
    job_id = made_before_the_crash(app, s)
    clock.set(DUE + CLAIM_LEASE_SECONDS)
    s.step()
    assert [j.id for j in jobs_of(app)] == [job_id]
    assert store_of(app).states()[0].last_job == job_id


def test_a_claim_recovered_past_its_catchup_is_missed(make_app, scripts_dir, clock) -> None:
    app = app_with(make_app, scripts_dir, every_minute_and("SCHEDULE_CATCHUP = 10"))
    s = scheduler(app, clock)
    clock.set(DUE)
    dead_claim(app)
    clock.set(DUE + CLAIM_LEASE_SECONDS)
    s.step()
    assert jobs_of(app) == []
    [missed] = [r for r in outcomes(app) if r["outcome"] == MISSED]
    assert missed["recovered"] is True and missed["late_s"] == CLAIM_LEASE_SECONDS
    assert store_of(app).states()[0].last_outcome == MISSED


def test_a_claim_recovered_after_a_later_time_came_is_missed(make_app, scripts_dir, clock) -> None:
    """Down over 07:00 and 07:01, back at 07:01:30: 07:00 is an older miss, 07:01 runs."""
    app = app_with(make_app, scripts_dir)
    clock.set(DUE)
    dead_claim(app)
    clock.set(DUE + MINUTE + 30)
    scheduler(app, clock).step()
    [job] = jobs_of(app)
    records = outcomes(app)
    assert [(r["outcome"], r["scheduled_at"][11:16], r.get("reason")) for r in records] == [
        (MISSED, "07:00", "superseded"),
        (STARTED, "07:01", None),
    ]
    [state] = store_of(app).states()
    assert (state.last_outcome, state.last_run_at, state.last_job) == (
        STARTED,
        DUE + MINUTE,
        job.id,
    )


def test_an_older_claim_recorded_late_leaves_the_later_outcome(
    make_app, scripts_dir, clock
) -> None:
    """07:00 left open, 07:01 claimed and started meanwhile (a lease longer than a
    minute would allow it): 07:00's late outcome does not become the last run."""
    app = app_with(make_app, scripts_dir)
    store = store_of(app)
    old = dead_claim(app)
    new = store.claim(*TICK, DUE + MINUTE, DUE + MINUTE)
    assert new is not None and new.previous == DUE
    assert store.record(new, STARTED, "j" * 32, DUE + 2 * MINUTE)
    [listed] = store.open_claims(DUE + 5 * MINUTE)
    taken = store.take_over(listed, DUE + 5 * MINUTE)
    assert taken is not None and taken.recovered and taken.last_job == "j" * 32
    assert not store.record(old, MISSED, None, DUE + 2 * MINUTE)  # no longer its holder's
    assert store.record(taken, MISSED, None, DUE + 2 * MINUTE)
    [state] = store.states()
    assert (state.last_outcome, state.last_run_at, state.last_job) == (
        STARTED,
        DUE + MINUTE,
        "j" * 32,
    )


def test_a_recovered_time_of_a_paused_script_is_skipped(make_app, scripts_dir, clock) -> None:
    app = app_with(make_app, scripts_dir)
    s = scheduler(app, clock)
    clock.set(DUE)
    dead_claim(app)
    store_of(app).set_paused("api", "tick.py", True, DUE)
    clock.set(DUE + CLAIM_LEASE_SECONDS)
    s.step()
    assert jobs_of(app) == []
    [skipped] = outcomes(app)
    assert (skipped["outcome"], skipped["reason"], skipped["recovered"]) == (
        SKIPPED,
        "paused",
        True,
    )


def test_a_run_key_is_one_per_time_and_never_a_callers() -> None:
    """A caller's Idempotency-Key is kept as its SHA-256 hex digest (jobs/http.py)."""
    key = run_key("api", "tick.py", "* * * * *", DUE)
    assert key == run_key("api", "tick.py", "* * * * *", DUE)
    assert key != run_key("api", "tick.py", "* * * * *", DUE + MINUTE)
    assert key != run_key("api", "tick.py", "*/1 * * * *", DUE)
    assert key.startswith("schedule:") and len(key) != 64


def test_the_fault_setting_needs_an_existing_folder(scripts_dir: Path, tmp_path: Path) -> None:
    from service.config import ConfigError, Settings

    base = {"SCRIPTS_DIR": str(scripts_dir)}
    with pytest.raises(ConfigError, match="SCHEDULE_TEST_FAULT"):
        Settings.from_env({**base, "SCHEDULE_TEST_FAULT": str(tmp_path / "absent" / "fault")})
    fault = tmp_path / "fault"  # need not exist: the test writes it when it strikes
    assert (
        Settings.from_env({**base, "SCHEDULE_TEST_FAULT": str(fault)}).schedule_test_fault == fault
    )


def test_claims_older_than_a_week_are_swept(make_app, scripts_dir, clock) -> None:
    """Each time's claim is a row: the scheduler removes them after CLAIM_DAYS, open
    ones too (no scheduler knew their schedule any more)."""
    app = app_with(make_app, scripts_dir)
    s = scheduler(app, clock)
    dead_claim(app, DUE)
    store_of(app).claim(*TICK, DUE + MINUTE, DUE + MINUTE)
    clock.set(DUE + 7 * 86400 + 30)
    assert s.sweep() == 1  # 07:00 a week ago; 07:01 still kept
    [left] = store_of(app).open_claims(clock.now())
    assert left.due == DUE + MINUTE


def made_before_the_crash(app, s: Scheduler) -> str:
    """Killed after creating the 07:00 job, before recording it: the job exists."""
    dead_claim(app)
    entry = next(iter(s.entries.values()))
    job_id, created = start_job(app.extensions["scriptgate"], entry.found, entry.cron, DUE)
    assert created
    return job_id


def test_a_job_made_before_the_crash_is_started_though_paused_since(
    make_app, scripts_dir, clock
) -> None:
    app = app_with(make_app, scripts_dir)
    s = scheduler(app, clock)
    clock.set(DUE)
    job_id = made_before_the_crash(app, s)
    store_of(app).set_paused("api", "tick.py", True, DUE)
    clock.set(DUE + CLAIM_LEASE_SECONDS)
    s.step()
    [started] = outcomes(app)
    assert (started["outcome"], started["job_id"], started["recovered"]) == (STARTED, job_id, True)


def test_a_job_made_before_downtime_counts_as_the_last_run(make_app, scripts_dir, clock) -> None:
    """Killed after creating 07:00's job, back at 07:01:30: 07:00 was started, and 07:01
    overlaps it (the job, with no worker here, is still queued)."""
    app = app_with(make_app, scripts_dir)
    s = scheduler(app, clock)
    clock.set(DUE)
    job_id = made_before_the_crash(app, s)
    clock.set(DUE + MINUTE + 30)
    scheduler(app, clock).step()
    assert [j.id for j in jobs_of(app)] == [job_id]
    records = [(r["outcome"], r["scheduled_at"][11:16], r.get("reason")) for r in outcomes(app)]
    assert records == [(STARTED, "07:00", None), (SKIPPED, "07:01", "overlap")]

"""Schedules in one process: a script's SCHEDULE_* read and checked at load, and the
scheduler driven by a test clock over a real app (runners import the scripts, jobs are
recorded in the SQLite store). Real servers, Redis and restarts are in
tests/integration/test_schedules.py."""

from __future__ import annotations

import threading
import time
import types
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from service.jobs.execute import JobExecutor
from service.jobs.store import JobQuery
from service.jobs.watch import Shutdown
from service.schedules.backends import open_store
from service.schedules.clock import ManualClock
from service.schedules.scheduler import Scheduler
from service.schedules.spec import ScheduleError, read_schedule
from service.schedules.store import MISSED, SKIPPED, STARTED
from service.schedules.times import latest_time, next_time
from service.scripts.params import read_params
from tests.unit.conftest import ADMIN, API, log_records, write_scripts
from tests.waiting import until

MINUTE = 60.0
# A Monday, 06:59:30 UTC: a minute boundary 30 s ahead.
START = datetime(2026, 12, 7, 6, 59, 30, tzinfo=timezone.utc).timestamp()
EVERY_MINUTE = """
    SCHEDULE = "* * * * *"
    def main(request, region: str = "all"):
        return {"region": region}
"""


def every_minute_and(line: str) -> str:
    """EVERY_MINUTE with one more line after SCHEDULE."""
    return EVERY_MINUTE.replace('"* * * * *"\n', f'"* * * * *"\n    {line}\n')


def module(**attributes) -> types.SimpleNamespace:
    return types.SimpleNamespace(**attributes)


def spec_of(handler=None, methods=("GET", "HEAD", "POST"), **attributes):
    def main(request, region: str = "all", count: int = 1):
        return None

    params = read_params(handler or main)
    return read_schedule(module(**attributes), params, list(methods))


# --- what a script may declare --------------------------------------------------------


def test_a_script_without_schedule_has_none() -> None:
    assert spec_of() is None


def test_a_schedule_becomes_the_request_its_job_runs_with() -> None:
    spec = spec_of(SCHEDULE="0  7 * * 1-5", SCHEDULE_PARAMS={"region": "eu", "count": 3})
    assert spec.crons == ("0 7 * * 1-5",)
    assert spec.method == "GET" and spec.query == "region=eu&count=3" and spec.body is None
    assert spec.timezone is None and spec.overlap is False and spec.catchup is None


def test_a_body_parameter_is_sent_as_json_with_post() -> None:
    def main(request, order: dict):
        return None

    spec = spec_of(main, SCHEDULE=["0 7 * * *", "0 19 * * *"], SCHEDULE_PARAMS={"order": {"n": 1}})
    assert spec.crons == ("0 7 * * *", "0 19 * * *")
    assert spec.method == "POST" and spec.body == '{"n": 1}'


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"SCHEDULE": "* * * *"}, "five-field"),
        ({"SCHEDULE": "* * * * * *"}, "five-field"),
        ({"SCHEDULE": "61 * * * *"}, "not a valid cron"),
        ({"SCHEDULE": 5}, "a list of 1 to"),
        ({"SCHEDULE": []}, "a list of 1 to"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_TZ": "Mars/Olympus"}, "unknown time zone"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_TZ": "../../etc/passwd"}, "IANA"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_PARAMS": {"nope": 1}}, "'nope' is not a declared"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_PARAMS": {"count": "many"}}, "count"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_PARAMS": ["region"]}, "must be a dict"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_OVERLAP": "yes"}, "True or False"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_CATCHUP": -1}, "0 or more"),
        ({"SCHEDULE_TZ": "UTC"}, "SCHEDULE is not"),
    ],
)
def test_a_bad_schedule_is_refused_naming_what_is_wrong(attributes, message) -> None:
    with pytest.raises(ScheduleError, match=message):
        spec_of(**attributes)


def test_a_script_that_takes_neither_get_nor_post_cannot_be_scheduled() -> None:
    with pytest.raises(ScheduleError, match="GET or POST"):
        spec_of(methods=("PUT",), SCHEDULE="* * * * *")


def test_daylight_saving_follows_croniter() -> None:
    """Spring forward: 02:30 does not exist, the run is at 03:00. Fall back: 01:30
    happens twice, and runs twice (croniter's rule, documented in docs/schedules.md)."""
    ny = ZoneInfo("America/New_York")
    before_gap = datetime(2026, 3, 8, 1, 0, tzinfo=ny).timestamp()
    after_gap = datetime.fromtimestamp(next_time("30 2 * * *", "America/New_York", before_gap), ny)
    assert (after_gap.hour, after_gap.minute, after_gap.utcoffset().total_seconds()) == (
        3,
        0,
        -4 * 3600,
    )
    start = datetime(2026, 11, 1, 0, 0, tzinfo=ny).timestamp()
    first = next_time("30 1 * * *", "America/New_York", start)
    second = next_time("30 1 * * *", "America/New_York", first)
    assert second - first == 3600  # the same wall time, an hour apart


def test_the_latest_time_includes_the_one_exactly_now() -> None:
    boundary = START + 30
    assert latest_time("* * * * *", "UTC", boundary) == boundary
    assert latest_time("* * * * *", "UTC", boundary - 0.001) == boundary - MINUTE


# --- the scheduler, driven by a test clock --------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def sched_app(make_app, scripts_dir: Path):
    write_scripts(scripts_dir, {"api/tick.py": EVERY_MINUTE})
    return make_app()


def scheduler(app, clock: ManualClock) -> Scheduler:
    made = Scheduler(app.extensions["scriptgate"], clock)
    made.scan()
    return made


def scheduled_jobs(app) -> list:
    store = app.extensions["scriptgate"].jobs.store
    return store.list_jobs(JobQuery(limit=200, trigger="schedule"), time.time()).jobs


def run_all(app, *job_ids: str) -> None:
    executor = JobExecutor(app, "unit:1", Shutdown())
    for job_id in job_ids:
        executor(job_id)


def test_a_scheduled_time_starts_one_job_as_caller_schedule(sched_app, clock) -> None:
    s = scheduler(sched_app, clock)
    s.step()
    assert scheduled_jobs(sched_app) == []  # 06:59:30: nothing due yet
    clock.advance(30)
    s.step()
    s.step()  # the same minute again: already handled
    jobs = scheduled_jobs(sched_app)
    assert len(jobs) == 1
    job = jobs[0]
    assert (job.trigger, job.caller, job.zone, job.script) == (
        "schedule",
        "schedule",
        "api",
        "tick.py",
    )
    assert job.method == "GET" and job.path == "/api/tick.py"


def test_two_schedulers_on_one_store_start_each_time_once(make_app, sched_app, clock) -> None:
    first, second = scheduler(sched_app, clock), scheduler(make_app(), clock)
    for minute in range(1, 4):
        clock.set(START + 30 + (minute - 1) * MINUTE)
        second.step()
        first.step()
        run_all(sched_app, *(j.id for j in scheduled_jobs(sched_app) if j.state == "queued"))
        assert len(scheduled_jobs(sched_app)) == minute


def test_a_run_due_while_the_last_still_runs_is_skipped(sched_app, clock) -> None:
    s = scheduler(sched_app, clock)
    clock.advance(30)
    s.step()  # started; no job worker here, so it stays queued
    clock.advance(MINUTE)
    s.step()
    assert len(scheduled_jobs(sched_app)) == 1
    state = open_store(sched_app.extensions["scriptgate"].jobs).states()[0]
    assert state.last_outcome == SKIPPED and state.last_run_at == START + 90
    records = [r for r in log_records(sched_app.extensions["scriptgate"].settings.log_file)]
    skipped = [r for r in records if r.get("message") == "schedule" and r["outcome"] == SKIPPED]
    assert skipped[0]["reason"] == "overlap"


def test_overlap_allowed_starts_the_next_run_anyway(make_app, scripts_dir, clock) -> None:
    write_scripts(scripts_dir, {"api/tick.py": every_minute_and("SCHEDULE_OVERLAP = True")})
    app = make_app()
    s = scheduler(app, clock)
    clock.advance(30)
    s.step()
    clock.advance(MINUTE)
    s.step()
    assert len(scheduled_jobs(app)) == 2


def test_after_downtime_the_latest_miss_within_catchup_runs_once(sched_app, clock) -> None:
    scheduler(sched_app, clock)  # first seen at 06:59:30
    clock.advance(30 + 30 * MINUTE)  # down for half an hour: back at 07:30:00
    s = scheduler(sched_app, clock)
    s.step()
    jobs = scheduled_jobs(sched_app)
    assert len(jobs) == 1
    state = open_store(sched_app.extensions["scriptgate"].jobs).states()[0]
    assert state.last_outcome == STARTED and state.last_run_at == clock.now()
    missed = [
        r
        for r in log_records(sched_app.extensions["scriptgate"].settings.log_file)
        if r.get("message") == "schedule" and r["outcome"] == MISSED
    ]
    assert missed[0]["count"] == 30  # 07:00 to 07:29, recorded, not run


def test_after_downtime_beyond_catchup_nothing_runs(make_app, scripts_dir, clock) -> None:
    write_scripts(scripts_dir, {"api/tick.py": EVERY_MINUTE.replace("* * * * *", "0 7 * * *")})
    app = make_app()
    scheduler(app, clock)  # first seen at 06:59:30
    clock.advance(30 + 2 * 3600)  # back at 09:00: 07:00 is two hours late (window: 1 h)
    s = scheduler(app, clock)
    s.step()
    assert scheduled_jobs(app) == []
    state = open_store(app.extensions["scriptgate"].jobs).states()[0]
    assert state.last_outcome == MISSED and state.last_run_at == START + 30


def test_with_no_catchup_a_late_time_is_missed(make_app, scripts_dir, clock) -> None:
    write_scripts(scripts_dir, {"api/tick.py": every_minute_and("SCHEDULE_CATCHUP = 5")})
    app = make_app()
    scheduler(app, clock)
    clock.set(START + 30 + 3 * 3600 + 20)  # 10:00:20: 20 s after the latest time
    s = scheduler(app, clock)
    s.step()
    assert scheduled_jobs(app) == []
    state = open_store(app.extensions["scriptgate"].jobs).states()[0]
    assert state.last_outcome == MISSED and state.last_run_at == START + 30 + 3 * 3600


def test_the_catchup_setting_is_the_default_of_scripts_without_their_own(
    make_app, scripts_dir, clock
) -> None:
    """SCHEDULE_CATCHUP=3h on the server: a time two hours late still runs once."""
    write_scripts(scripts_dir, {"api/tick.py": EVERY_MINUTE.replace("* * * * *", "0 7 * * *")})
    app = make_app(schedule_catchup=3 * 3600.0)
    scheduler(app, clock)  # first seen at 06:59:30
    clock.advance(30 + 2 * 3600)  # back at 09:00: 07:00 is two hours late (window: 3 h)
    scheduler(app, clock).step()
    assert len(scheduled_jobs(app)) == 1


def test_a_paused_script_is_skipped_until_resumed(sched_app, clock) -> None:
    store = open_store(sched_app.extensions["scriptgate"].jobs)
    s = scheduler(sched_app, clock)
    store.set_paused("api", "tick.py", True, time.time())
    clock.advance(30)
    s.step()
    assert scheduled_jobs(sched_app) == []
    assert store.states()[0].last_outcome == SKIPPED
    store.set_paused("api", "tick.py", False, time.time())
    clock.advance(MINUTE)
    s.step()
    assert len(scheduled_jobs(sched_app)) == 1


def test_editing_the_script_changes_its_schedule(sched_app, scripts_dir, clock) -> None:
    s = scheduler(sched_app, clock)
    assert [e.cron for e in s.entries.values()] == ["* * * * *"]
    write_scripts(scripts_dir, {"api/tick.py": EVERY_MINUTE.replace("* * * * *", "0 7 * * *")})
    s.scan()
    assert [e.cron for e in s.entries.values()] == ["0 7 * * *"]
    states = open_store(sched_app.extensions["scriptgate"].jobs).states()
    assert [st.cron for st in states] == ["0 7 * * *"]
    (scripts_dir / "api" / "tick.py").unlink()
    s.scan()
    assert s.entries == {}
    assert open_store(sched_app.extensions["scriptgate"].jobs).states() == []


def test_a_finished_run_updates_last_success_and_failures(make_app, scripts_dir, clock) -> None:
    write_scripts(
        scripts_dir,
        {
            "api/flaky.py": """
                SCHEDULE = "* * * * *"
                def main(request):
                    import os
                    if os.path.exists(os.environ.get("FAIL_FLAG", "/nonexistent")):
                        raise RuntimeError("failing")
                    return "ok"
            """,
            "api/fails.py": """
                SCHEDULE = "* * * * *"
                def main(request):
                    raise RuntimeError("always")
            """,
        },
    )
    app = make_app()
    s = scheduler(app, clock)
    for _ in range(2):
        clock.advance(30)
        s.step()
        run_all(app, *(j.id for j in scheduled_jobs(app) if j.state == "queued"))
        s.follow_jobs()
        clock.advance(30)
    states = {st.script: st for st in open_store(app.extensions["scriptgate"].jobs).states()}
    assert states["fails.py"].failures == 2 and states["fails.py"].last_success_at is None
    assert states["flaky.py"].failures == 0 and states["flaky.py"].last_success_at is not None


# --- what routes and the platform views show ------------------------------------------


def test_a_bad_schedule_makes_the_script_broken_in_routes(make_app, scripts_dir) -> None:
    write_scripts(scripts_dir, {"api/bad.py": 'SCHEDULE = "every day"\ndef main(request): ...\n'})
    client = make_app().test_client()
    routes = client.get("/_platform/routes?detail=1").get_json()["api"]
    bad = next(r for r in routes if r["path"] == "bad.py")
    assert bad["state"] == "import_error" and "five-field" in bad["error"]
    listing = client.get("/_platform/schedules").get_json()
    assert listing["broken"] == [{"script": "/api/bad.py", "zone": "api", "error": bad["error"]}]
    assert client.get("/api/bad.py", headers=API).status_code == 500


def test_the_listing_shows_each_schedule_and_its_last_run(sched_app, clock) -> None:
    s = scheduler(sched_app, clock)
    clock.advance(30)
    s.step()
    client = sched_app.test_client()
    [entry] = client.get("/_platform/schedules").get_json()["schedules"]
    job = scheduled_jobs(sched_app)[0]
    assert entry["script"] == "/api/tick.py" and entry["zone"] == "api"
    assert entry["schedule"] == "* * * * *" and entry["timezone"] == "UTC"
    assert entry["paused"] is False and entry["next_run"].endswith("Z")
    assert entry["last_run"]["job_id"] == job.id and entry["last_run"]["state"] == "queued"
    assert entry["last_run"]["scheduled_at"] == "2026-12-07T07:00:00.000Z"
    listed = client.get("/_platform/jobs?trigger=schedule", headers=ADMIN).get_json()["jobs"]
    assert [j["id"] for j in listed] == [job.id] and listed[0]["caller"] == "schedule"


def test_pause_and_resume_need_a_platform_schedules_key(sched_app) -> None:
    client = sched_app.test_client()
    pause = "/_platform/schedules/api/tick.py/pause"
    assert client.post(pause).status_code == 401
    assert client.post(pause, headers={"X-Admin-Key": "wrong"}).status_code == 401
    assert client.post(pause, headers=API).status_code == 401
    assert client.get(pause, headers=ADMIN).status_code == 405
    answer = client.post(pause, headers=ADMIN)
    assert answer.status_code == 200 and answer.get_json()["schedules"][0]["paused"] is True
    listing = client.get("/_platform/schedules").get_json()["schedules"]
    assert listing[0]["paused"] is True
    resumed = client.post("/_platform/schedules/api/tick.py/resume", headers=ADMIN)
    assert resumed.get_json()["schedules"][0]["paused"] is False


@pytest.mark.parametrize(
    "path",
    [
        "/_platform/schedules/api/nothing.py/pause",
        "/_platform/schedules/api/hello.py/pause",  # exists, no schedule
        "/_platform/schedules/moon/tick.py/pause",
        "/_platform/schedules/api/../tick.py/pause",
    ],
)
def test_pausing_what_has_no_schedule_is_404(sched_app, path) -> None:
    answer = sched_app.test_client().post(path, headers=ADMIN)
    assert answer.status_code == 404
    assert answer.get_json()["error"] == "schedule not found"


def test_the_api_document_describes_the_schedule_endpoints(sched_app) -> None:
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate

    doc = sched_app.test_client().get("/_platform/openapi.json").get_json()
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert doc["paths"]["/_platform/schedules"]["get"]["operationId"] == "list_schedules"
    steer = doc["paths"]["/_platform/schedules/{zone}/{path}/pause"]["post"]
    assert steer["security"] == [{"adminKey": []}]


# --- settings -------------------------------------------------------------------------


def test_schedule_settings_are_checked_at_startup(scripts_dir: Path, tmp_path: Path) -> None:
    from service.config import ConfigError, Settings

    base = {"SCRIPTS_DIR": str(scripts_dir)}
    assert Settings.from_env(base).schedule_tz == "UTC"
    assert Settings.from_env({**base, "SCHEDULE_TZ": "Asia/Taipei"}).schedule_tz == "Asia/Taipei"
    with pytest.raises(ConfigError, match="SCHEDULE_TZ"):
        Settings.from_env({**base, "SCHEDULE_TZ": "Nowhere/Special"})
    with pytest.raises(ConfigError, match="SCHEDULE_TEST_CLOCK"):
        Settings.from_env({**base, "SCHEDULE_TEST_CLOCK": str(tmp_path / "absent")})
    clock = tmp_path / "clock"
    clock.write_text("1765090800.0")
    assert (
        Settings.from_env({**base, "SCHEDULE_TEST_CLOCK": str(clock)}).schedule_test_clock == clock
    )


def test_a_hanging_import_delays_no_other_schedule(make_app, scripts_dir, clock) -> None:
    """A hostile script with SCHEDULE whose import never ends: the scan waits for its
    runner (SCRIPT_TIMEOUT, 5 s here), the other schedule's time fires regardless."""
    write_scripts(scripts_dir, {"api/tick.py": EVERY_MINUTE})
    app = make_app(script_timeout=5.0)
    s = scheduler(app, clock)
    write_scripts(scripts_dir, {"api/hang.py": 'SCHEDULE = "* * * * *"\nwhile True:\n    pass\n'})
    stop = threading.Event()
    runner = threading.Thread(target=s.run, args=(stop,), daemon=True)
    runner.start()
    try:
        until(
            lambda: any(p.name == "hang.py" for p in scripts_dir.joinpath("api").iterdir()),
            what="the hostile script written",
        )
        clock.advance(30)
        until(lambda: len(scheduled_jobs(app)) == 1, seconds=10, what="tick.py's run")
        timed_out = [
            r
            for r in log_records(app.extensions["scriptgate"].settings.log_file)
            if "import timed out" in r.get("message", "") or r.get("kind") == "import"
        ]
        assert timed_out == [], "the run waited for the hanging import"
        until(
            lambda: (
                (listing := app.test_client().get("/_platform/schedules").get_json()["broken"])
                and listing[0]["script"] == "/api/hang.py"
            ),
            seconds=30,
            what="the hanging script reported broken",
        )
    finally:
        stop.set()
        clock.advance(0)
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_check_names_a_bad_schedule(make_app, scripts_dir, capsys) -> None:
    from service import cli

    write_scripts(
        scripts_dir,
        {
            "api/late.py": 'SCHEDULE = "0 25 * * *"\ndef main(request): ...\n',
            "api/typed.py": (
                'SCHEDULE = "0 7 * * *"\nSCHEDULE_PARAMS = {"n": "x"}\n'
                "def main(request, n: int = 1): ...\n"
            ),
        },
    )
    assert cli.main(["check", "--scripts", str(scripts_dir)]) == 1
    err = capsys.readouterr().err
    assert "FAIL api/late.py: import_error: SCHEDULE: '0 25 * * *' is not a valid cron" in err
    assert "FAIL api/typed.py: import_error: SCHEDULE_PARAMS: n: Input should be a valid" in err

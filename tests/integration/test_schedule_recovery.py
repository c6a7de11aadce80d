"""A scheduler killed or stopped between claiming a time and recording it, for real:
real gunicorn and job supervisor, SQLite or a real redis-server, the scheduler's time
set by the test (SCHEDULE_TEST_CLOCK) and the fault struck by the scheduler itself
(SCHEDULE_TEST_FAULT: SIGKILL or SIGSTOP right after the claim, or right after the
job). Whatever happens, each scheduled time has exactly one job: never zero, never two.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from service.schedules.store import CLAIM_LEASE_SECONDS
from tests.integration.test_schedules import (
    ADMIN,
    START,
    Setup,
    counter,
    runs_reach,
    schedule_of,
    schedule_records,
    scheduler_pids,
    scheduler_ready,
)
from tests.servers import Gunicorn, stays_the_same, wait_until

DUE = START + 30  # 07:00:00, the first time of `* * * * *` after START
RECOVERY = DUE + CLAIM_LEASE_SECONDS  # the claim's lease has run out


def with_fault(setup: Setup) -> Path:
    """The fault file every server of `setup` watches (SCHEDULE_TEST_FAULT); the test
    writes it (strike) once the servers run."""
    path = setup.tmp / "fault"
    setup.env["SCHEDULE_TEST_FAULT"] = str(path)
    return path


def strike(path: Path, fault: str) -> None:
    part = path.with_suffix(".part")
    part.write_text(fault)
    part.replace(path)


def started(*servers: Gunicorn) -> list[dict]:
    return [r for r in schedule_records(*servers) if r["outcome"] == "started"]


def one_job_for_the_time(setup: Setup, server: Gunicorn, *servers: Gunicorn) -> str:
    """Exactly one run, one job and one `started` line (recovered) for 07:00; its id."""
    assert stays_the_same(setup.ticks, 1.0)  # twenty clock reads by each scheduler
    [run] = setup.runs()
    job_id = run.split()[0]
    jobs = server.get("/_platform/jobs?trigger=schedule", headers=ADMIN).json()["jobs"]
    assert [j["id"] for j in jobs] == [job_id]
    [line] = started(server, *servers)
    assert line["recovered"] is True and line["job_id"] == job_id
    assert line["scheduled_at"] == "2026-12-07T07:00:00.000Z"
    assert schedule_of(server)["last_run"]["job_id"] == job_id
    return job_id


def test_a_scheduler_killed_after_its_claim_is_replaced_and_runs_the_time_once(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    setup = Setup(tmp_path)
    fault = with_fault(setup)
    with setup.server("only", **store_env) as server:
        scheduler_ready(server)
        [first] = scheduler_pids(server)
        strike(fault, "kill claim")
        setup.set_clock(DUE)
        wait_until(
            lambda: (found := scheduler_pids(server)) and first not in found,
            timeout=30,
            what="the killed scheduler to be replaced",
        )
        scheduler_ready(server, count=2)  # the new one knows the schedule
        assert not fault.exists() and setup.runs() == []  # claimed, then killed: no job
        setup.set_clock(RECOVERY)
        runs_reach(setup, 1)
        one_job_for_the_time(setup, server)
        assert counter(server, "started") == 1


def test_a_scheduler_killed_after_creating_the_job_leaves_that_one_job(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    setup = Setup(tmp_path)
    fault = with_fault(setup)
    with setup.server("one", **store_env) as one, setup.server("two", **store_env) as two:
        scheduler_ready(one, two)
        strike(fault, "kill job")
        setup.set_clock(DUE)
        [run] = runs_reach(setup, 1)  # the job was created and runs; its outcome was not
        wait_until(lambda: not fault.exists(), timeout=30, what="the fault to strike")
        setup.set_clock(RECOVERY)
        wait_until(lambda: started(one, two), timeout=30, what="the claim to be recovered")
        assert one_job_for_the_time(setup, one, two) == run.split()[0]
        assert counter(one, "started") + counter(two, "started") == 1


@contextlib.contextmanager
def resumed_at_the_end(pids: set[int]) -> Iterator[None]:
    """A stopped scheduler is let go however the test ends (a stopped process would
    hold up its server's shutdown)."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def stopped(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"
    return False


def test_a_stopped_scheduler_resumed_after_its_claim_was_taken_over_adds_no_job(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    """Slow, not dead: the other server's scheduler takes the claim over and creates the
    job; the first one, let go, creates it too and gets the same job back."""
    setup = Setup(tmp_path)
    fault = with_fault(setup)
    with setup.server("one", **store_env) as one, setup.server("two", **store_env) as two:
        scheduler_ready(one, two)
        schedulers = scheduler_pids(one) | scheduler_pids(two)
        with resumed_at_the_end(schedulers):
            strike(fault, "stop claim")
            setup.set_clock(DUE)
            [slow] = wait_until(
                lambda: [p for p in schedulers if stopped(p)] or None,
                timeout=30,
                what="a scheduler to stop after its claim",
            )
            setup.set_clock(RECOVERY)
            runs_reach(setup, 1)
            job_id = one_job_for_the_time(setup, one, two)
            os.kill(slow, signal.SIGCONT)
            [lost] = wait_until(
                lambda: schedule_records(one, two, message="schedule claim taken over"),
                timeout=30,
                what="the resumed scheduler to find its claim taken over",
            )
        assert lost["job_id"] == job_id
        assert one_job_for_the_time(setup, one, two) == job_id
        assert counter(one, "started") + counter(two, "started") == 1


def test_of_many_recoverers_of_an_open_claim_exactly_one_takes_it(schedule_store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    schedule_store.register("api", "tick.py", "* * * * *", START)
    holder = schedule_store.claim("api", "tick.py", "* * * * *", DUE, DUE)
    assert schedule_store.open_claims(DUE - 1) == []  # claimed after: not listed
    [listed] = schedule_store.open_claims(RECOVERY - CLAIM_LEASE_SECONDS)
    assert (listed.due, listed.previous, listed.claimed_at) == (DUE, START, DUE)
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda _: schedule_store.take_over(listed, RECOVERY), range(16)))
    [winner] = [t for t in taken if t is not None]
    assert winner.recovered and winner.claimed_at == RECOVERY
    assert schedule_store.take_over(listed, RECOVERY + 60) is None  # no longer as listed
    assert not schedule_store.record(holder, "started", "h" * 32, DUE + 60)  # it lost it
    assert schedule_store.states()[0].last_outcome == ""
    assert schedule_store.record(winner, "started", "w" * 32, DUE + 60)
    assert not schedule_store.record(winner, "started", "w" * 32, DUE + 60)  # once
    assert schedule_store.open_claims(RECOVERY + 3600) == []
    [state] = schedule_store.states()
    assert (state.last_outcome, state.last_run_at, state.last_job) == ("started", DUE, "w" * 32)


def test_forgetting_a_schedule_drops_its_open_claim(schedule_store) -> None:
    schedule_store.register("api", "tick.py", "* * * * *", START)
    schedule_store.register("api", "other.py", "* * * * *", START)
    schedule_store.claim("api", "tick.py", "* * * * *", DUE, DUE)
    schedule_store.claim("api", "other.py", "* * * * *", DUE, DUE)
    schedule_store.forget("api", "tick.py", "* * * * *")
    assert [c.script for c in schedule_store.open_claims(RECOVERY)] == ["other.py"]

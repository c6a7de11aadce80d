"""Deadlines on runner threads: a timed-out script is interrupted, and the interruption
never leaks into the next job its thread runs."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service.deadline import RunnerPool, ScriptTimeout


def spin() -> None:
    while True:
        pass


def test_value_and_exception_come_back_to_the_caller() -> None:
    pool = RunnerPool()
    assert pool.run(lambda: 42, 1.0) == 42
    with pytest.raises(ZeroDivisionError):
        pool.run(lambda: 1 / 0, 1.0)


def test_a_spinning_script_times_out_and_the_log_can_say_where() -> None:
    pool = RunnerPool()
    with pytest.raises(ScriptTimeout) as info:
        pool.run(spin, 0.2)
    assert "deadline of 0.2 s passed" in str(info.value)
    assert "in spin" in str(info.value)


def test_the_interrupted_thread_is_reused_and_no_timeout_reaches_the_next_job() -> None:
    """The reaper keeps injecting until the runner settles; hundreds of jobs right after
    must all complete normally, on the same threads."""
    pool = RunnerPool()
    with pytest.raises(ScriptTimeout):
        pool.run(spin, 0.1)
    results = [pool.run(lambda i=i: i * 2, 2.0) for i in range(500)]
    assert results == [i * 2 for i in range(500)]


def test_jobs_in_parallel_each_get_their_own_answer() -> None:
    pool = RunnerPool()
    answers: dict[int, int] = {}

    def call(i: int) -> None:
        answers[i] = pool.run(lambda: i, 5.0)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == {i: i for i in range(16)}


PROFILED_AFTER_SCRIPTS = """
import cProfile
from service.deadline import RunnerPool, ScriptTimeout

def spin():
    while True:
        pass

pool = RunnerPool()
assert pool.run(lambda: 1, 5) == 1
try:
    pool.run(spin, 0.2)
except ScriptTimeout:
    pass
assert pool.settle(5)
assert pool.run(lambda: 2, 5) == 2
cProfile.run("sum(range(10))")  # spun for ever while CPython's async-exception flag stayed set
print("profiled")
"""


def test_a_profiler_still_runs_after_scripts_ran_and_timed_out() -> None:
    """Dropping a pending ScriptTimeout must not leave CPython's interpreter-wide
    async-exception flag set: a profiler or debugger in the worker would hang."""
    done = subprocess.run(
        [sys.executable, "-c", PROFILED_AFTER_SCRIPTS],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("profiled")

"""Run a script's code under a deadline, in any thread, under any gunicorn worker class.

The code runs on a runner thread while the request's own thread waits for it with a
timeout. At the deadline the request thread answers 504 through the ordinary pipeline
(logged, counted, traced like any response) and the runner is handed to the reaper,
which raises `ScriptTimeout` inside it every REPEAT_SECONDS
(`PyThreadState_SetAsyncExc`). A script that swallows every one of them, or waits
inside a C call (a `sleep`, a socket read) past GRACE_SECONDS, cannot be stopped: the
reaper asks `recycle` to replace the worker once its other requests are answered.

Why not the standard library: a ThreadPoolExecutor cannot tell which thread runs a
job, cannot leave a stuck thread behind (its threads are joined at exit), and its
futures cost more than the two C-level locks used here. SIGALRM, the previous design,
only reaches the main thread, so it cannot serve a threaded worker.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from service import recycle

T = TypeVar("T")
REPEAT_SECONDS = 0.05
GRACE_SECONDS = 2.0
STOP_POLL_SECONDS = 0.2

_RUNNING, _ABANDONED, _DONE = 0, 1, 2
# A prototype of our own (not ctypes.pythonapi's shared function object, whose argtypes
# other code may rely on). c_void_p, not py_object: clearing a pending exception takes
# NULL, which py_object cannot pass (None would become Py_None and be raised).
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


class ScriptTimeout(BaseException):
    """Raised inside a script at its deadline.

    A BaseException so that a script's `except Exception:` does not swallow it.
    """


class ScriptStopped(BaseException):
    """Raised to the waiting thread when `stop()` asked for it (a cancelled job); the
    script itself is interrupted as at a deadline."""


class _Job:
    __slots__ = (
        "after",
        "call",
        "done",
        "error",
        "give_up_at",
        "lock",
        "runner",
        "state",
        "value",
    )

    def __init__(self, call: Callable[[], Any], after: Callable[[], None] | None) -> None:
        self.call = call
        self.after = after
        self.done = threading.Lock()
        self.done.acquire()
        self.lock = threading.Lock()  # guards state against the reaper's injections
        self.state = _RUNNING
        self.value: Any = None
        self.error: BaseException | None = None
        self.runner: _Runner | None = None
        self.give_up_at = 0.0


class _Runner:
    """One thread that runs jobs one at a time; idle runners wait in the pool."""

    def __init__(self, pool: RunnerPool) -> None:
        self.pool = pool
        self.wakeup = threading.Lock()
        self.wakeup.acquire()
        self.job: _Job | None = None
        self.thread = threading.Thread(target=self._loop, name="scriptgate-runner", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.wakeup.acquire()
            job = self.job
            assert job is not None
            try:
                try:
                    job.value = job.call()
                except BaseException as exc:  # handed to the waiting request thread
                    job.error = exc
            except ScriptTimeout as exc:  # injected between the script's end and here
                job.error = job.error or exc
            while True:  # one injected on the way into _settle is retried, not fatal
                try:
                    self._settle(job)
                    break
                except ScriptTimeout:
                    continue
            if job.after is not None:
                with contextlib.suppress(Exception):  # releasing must not kill the runner
                    job.after()
            job.done.release()
            self.job = None
            self.pool.put_back(self)

    def _settle(self, job: _Job) -> None:
        """Mark the job done, and drop an injected ScriptTimeout still pending for us.

        The reaper injects only while holding job.lock and seeing the job abandoned, so
        a job that was never abandoned has nothing pending (the usual case: nothing to
        do), and once this returns no exception can reach the next job.
        """
        while True:
            try:
                with job.lock:
                    abandoned = job.state == _ABANDONED
                    job.state = _DONE
                if abandoned:
                    _drop_pending(self.thread.ident)
                return
            except (ScriptTimeout, _Dropped):  # delivered, so nothing is pending now
                continue


class _Dropped(BaseException):
    """What a runner delivers to itself in place of a ScriptTimeout still pending."""


def _drop_pending(ident: int) -> None:
    """Drop an asynchronous exception pending for this (the calling) thread.

    Clearing it with PyThreadState_SetAsyncExc(id, NULL) would leave CPython's
    interpreter-wide "async exception pending" flag set until some thread has one
    delivered: every thread would then take the eval loop's slow path at each call and
    loop, and under a profiler or debugger (sys.setprofile, sys.settrace) spin there
    for ever. So the pending exception is replaced by one delivered and caught here at
    once, which clears the flag.
    """
    try:
        _set_async_exc(ident, id(_Dropped))  # delivered at the next check, often at once
        for _ in range(1000):  # a backward jump is such a check
            pass
    except _Dropped:
        return
    _set_async_exc(ident, None)  # not delivered (not seen): clear it the plain way


class RunnerPool:
    """The runner threads of one process, reused across requests."""

    def __init__(self) -> None:
        self._idle: list[_Runner] = []
        self._lock = threading.Lock()
        self._reaper: _Reaper | None = None

    def put_back(self, runner: _Runner) -> None:
        with self._lock:
            self._idle.append(runner)

    def run(
        self,
        func: Callable[[], T],
        seconds: float,
        stop: Callable[[], bool] | None = None,
        after: Callable[[], None] | None = None,
    ) -> T:
        """Run func() in this request's context; raise ScriptTimeout after `seconds`, or
        ScriptStopped as soon as `stop()` (asked every STOP_POLL_SECONDS) is true.

        `after` runs once the code has really stopped, which for an abandoned script is
        after its caller had the 504: what it releases (a concurrency slot) stays held
        while the script still runs.
        """
        context = contextvars.copy_context()  # Flask's request and the current span
        job = _Job(lambda: context.run(func), after)
        with self._lock:
            runner = self._idle.pop() if self._idle else None
        if runner is None:
            runner = _Runner(self)
        job.runner = runner
        runner.job = job
        runner.wakeup.release()
        if stop is None:
            ended = "done" if job.done.acquire(timeout=seconds) else "deadline"
        else:
            ended = _wait(job, seconds, stop)
        if ended != "done":
            with job.lock:
                if job.state != _DONE:
                    job.state = _ABANDONED
            if job.state == _ABANDONED:
                job.give_up_at = time.monotonic() + GRACE_SECONDS
                where = _stack_of(runner.thread)
                self._reap(job)
                if ended == "stopped":
                    raise ScriptStopped(f"stopped on request; the script was at:\n{where}")
                raise ScriptTimeout(
                    f"deadline of {seconds:g} s passed; the script was at:\n{where}"
                )
            job.done.acquire()  # finished right at the deadline: its answer stands
        if job.error is not None:
            error, job.error = job.error, None
            raise error
        return job.value  # type: ignore[no-any-return]

    def _reap(self, job: _Job) -> None:
        with self._lock:
            if self._reaper is None:
                self._reaper = _Reaper()
        self._reaper.add(job)

    def settle(self, timeout: float) -> bool:
        """Wait until every interrupted script has stopped; False if one still runs after
        `timeout` (the reaper has then asked `recycle` to retire this process)."""
        reaper = self._reaper
        deadline = time.monotonic() + timeout
        while reaper is not None and reaper.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(REPEAT_SECONDS)
        return True


def _wait(job: _Job, seconds: float, stop: Callable[[], bool]) -> str:
    """ "done", "deadline", or "stopped" once stop() is true."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if job.done.acquire(timeout=max(0.0, min(remaining, STOP_POLL_SECONDS))):
            return "done"
        if remaining <= STOP_POLL_SECONDS:
            return "deadline"
        if stop():
            return "stopped"


def _stack_of(thread: threading.Thread, limit: int = 32) -> str:
    """Where a running thread is now: what the log shows for a timeout."""
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None:
        return ""
    return "".join(traceback.format_stack(frame, limit=limit)).rstrip("\n")


class _Reaper:
    """One thread per process that keeps interrupting abandoned scripts."""

    def __init__(self) -> None:
        self._jobs: list[_Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name="scriptgate-reaper", daemon=True).start()

    def add(self, job: _Job) -> None:
        with self._lock:
            self._jobs.append(job)
        self._wake.set()

    def running(self) -> bool:
        with self._lock:
            return any(job.state != _DONE for job in self._jobs)

    def _loop(self) -> None:
        while True:
            with self._lock:
                jobs = [job for job in self._jobs if job.state != _DONE]
                self._jobs = jobs
            if not jobs:
                self._wake.wait()
                self._wake.clear()
                continue
            now = time.monotonic()
            for job in jobs:
                with job.lock:
                    runner = job.runner
                    # A dead thread's id may be reused by a new one: never aim at it.
                    if job.state == _ABANDONED and runner and runner.thread.is_alive():
                        _set_async_exc(runner.thread.ident, id(ScriptTimeout))
                if job.state == _ABANDONED and now >= job.give_up_at:
                    recycle.request("a script outlived its deadline and could not be stopped")
            time.sleep(REPEAT_SECONDS)

"""Stop a script that runs past its deadline.

In a gunicorn sync worker the request runs on the main thread, so a SIGALRM interval
timer interrupts the script itself: no extra thread per request, and nothing keeps
burning CPU after the 504. The timer repeats every 50 ms, so a script that swallows
the first `ScriptTimeout` is hit again; one that swallows them all for GRACE_SECONDS
gets `last_resort` called from the signal handler (under gunicorn: answer 504 on the
socket, then exit the worker). Code stuck inside one C call never returns to the
interpreter; gunicorn's own worker timeout, set above every script timeout, then
replaces the worker.

Off the main thread (threaded servers) signals cannot be used: the script then runs in
a helper thread, and on timeout the worker is asked to exit gracefully after answering,
because a Python thread cannot be killed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
REPEAT_SECONDS = 0.05
GRACE_SECONDS = 1.0
_HAS_ITIMER = hasattr(signal, "setitimer")


class ScriptTimeout(BaseException):
    """Raised inside a script at its deadline.

    A BaseException so that a script's `except Exception:` does not swallow it.
    """


class _Deadline:
    """The one armed deadline of this process (the main thread runs one script at a time)."""

    give_up_at = 0.0
    last_resort: Callable[[], None] | None = None
    installed = False


def _on_alarm(signum: int, frame: Any) -> None:
    if _Deadline.last_resort is not None and time.monotonic() >= _Deadline.give_up_at:
        _Deadline.last_resort()
    raise ScriptTimeout()


def run_with_deadline(
    func: Callable[[], T], seconds: float, last_resort: Callable[[], None] | None = None
) -> T:
    """Run func(); raise ScriptTimeout if it is still running after `seconds`."""
    if not (_HAS_ITIMER and threading.current_thread() is threading.main_thread()):
        return _run_in_thread(func, seconds)
    if not _Deadline.installed:
        signal.signal(signal.SIGALRM, _on_alarm)
        _Deadline.installed = True
    _Deadline.give_up_at = time.monotonic() + seconds + GRACE_SECONDS
    _Deadline.last_resort = last_resort
    signal.setitimer(signal.ITIMER_REAL, seconds, REPEAT_SECONDS)
    try:
        return func()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _Deadline.last_resort = None


def _run_in_thread(func: Callable[[], T], seconds: float) -> T:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = func()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="scriptgate-script", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        recycle_worker()
        raise ScriptTimeout()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def recycle_worker() -> None:
    """Ask a gunicorn worker to finish its requests and exit (gunicorn starts a new one)."""
    if os.environ.get("SCRIPTGATE_GUNICORN_WORKER") == str(os.getpid()):
        os.kill(os.getpid(), signal.SIGTERM)

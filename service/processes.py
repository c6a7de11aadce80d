"""Helper processes of gunicorn's master (the platform plane, the job supervisor): forked
without the master's signal handlers and sockets, kept running, stopped.

Not the runners' processes (runners/): these hold the platform's secrets and serve it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from service.config import ConfigError
from service.runners.limits import die_with_parent, name_process

# gunicorn's master installs these; a forked plane must not run the master's handlers.
_MASTER_SIGNALS = (
    "SIGHUP",
    "SIGQUIT",
    "SIGINT",
    "SIGTERM",
    "SIGTTIN",
    "SIGTTOU",
    "SIGUSR1",
    "SIGUSR2",
    "SIGWINCH",
    "SIGCHLD",
)
RESTARTS_PER_MINUTE = 10


def bind(address: str, variable: str = "PLATFORM_BIND") -> socket.socket:
    """Listen in the master, before gunicorn starts, so a taken port stops startup."""
    host, _, port = address.rpartition(":")
    try:
        return socket.create_server((host.strip("[]"), int(port)), backlog=128)
    except OSError as exc:
        raise ConfigError(variable, f"cannot listen on {address}: {exc.strerror}") from None


def fork_from_master(listeners: list[Any], run: Callable[[], None], name: str) -> int:
    """A helper process of the master (the plane, the job supervisor): without the
    master's signal handlers and listening sockets, and gone with the master."""
    pid = os.fork()
    if pid:
        return pid
    try:
        for signal_name in _MASTER_SIGNALS:
            signal.signal(getattr(signal, signal_name), signal.SIG_DFL)
        die_with_parent()
        name_process(name)
        for listener in listeners:  # the workers' port is not ours
            listener.close()
        run()
    finally:
        os._exit(0)
    return 0  # not reached


def exited(pid: int) -> bool:
    """Whether a child has ended (reaped here, or already by gunicorn's own loop)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return bool(done)


class Supervisor:
    """Keeps one helper process of the master running (the plane, the job supervisor):
    the master calls `check()` on every loop turn.

    A helper that dies (killed, out of memory) is started again, at most
    RESTARTS_PER_MINUTE times a minute so one that cannot start does not spin.
    """

    def __init__(self, what: str, start: Callable[[], int], log: Any, stop_seconds: float) -> None:
        self.what = what
        self.start = start
        self.log = log
        self.stop_seconds = stop_seconds
        self.pid = start()
        self._restarts: list[float] = []

    def check(self) -> int | None:
        """Restart a dead helper; the dead one's pid, for its metrics to be folded."""
        if not exited(self.pid):
            return None
        dead = self.pid
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60]
        if len(self._restarts) >= RESTARTS_PER_MINUTE:
            return None
        self._restarts.append(now)
        self.log.error("%s %s exited; starting a new one", self.what, dead)
        self.pid = self.start()
        return dead

    def stop(self) -> None:
        stop(self.pid, self.stop_seconds)


def stop(pid: int, timeout: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by gunicorn's own loop
            return
        if done:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

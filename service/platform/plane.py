"""The platform plane: /_platform/* on a port of its own, served by its own process.

Scripts can fill every thread of every worker (sleeping on I/O, spinning on CPU). Health
checks and Prometheus scrapes must still be answered, so with `PLATFORM_BIND` set the
master forks one more process that serves only the platform endpoints, through the same
app and pipeline (access checks, metrics, log line), on a small threaded server. It
answers no script call, so slow calls cannot hold it up. (Health, routes?detail=1 and
the API document import a script it has not seen, to report broken ones: that import
runs under the import deadline, and a script that failed is reported from memory for
30 s rather than imported again.)
"""

from __future__ import annotations

import contextlib
import logging
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
PROCESS_NAME = "sg-plane"  # /proc/PID/comm: tells the plane from gunicorn's workers
RESTARTS_PER_MINUTE = 10


def bind(address: str, variable: str = "PLATFORM_BIND") -> socket.socket:
    """Listen in the master, before gunicorn starts, so a taken port stops startup."""
    host, _, port = address.rpartition(":")
    try:
        return socket.create_server((host.strip("[]"), int(port)), backlog=128)
    except OSError as exc:
        raise ConfigError(variable, f"cannot listen on {address}: {exc.strerror}") from None


def start(server: Any, listeners: list[Any]) -> int:
    """Fork the plane from gunicorn's master (single-threaded, so fork is safe)."""
    return fork_from_master(listeners, lambda: _serve(server), PROCESS_NAME)


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


def _serve(server: Any) -> None:
    from werkzeug.serving import make_server

    from service.app import create_app

    settings = server.settings
    app = create_app(
        settings, run_dir=server.run_dir, started_at=server.started_at, platform_only=True
    )
    # werkzeug would log each request in its own format; the pipeline writes the JSON one.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    host, _, port = settings.platform_bind.rpartition(":")
    listener = server.plane_socket
    make_server(
        host.strip("[]"), int(port), app, threaded=True, fd=listener.fileno()
    ).serve_forever()


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

"""The platform plane: /_platform/* on a port of its own, served by its own process.

Scripts can fill every thread of every worker (sleeping on I/O, spinning on CPU). Health
checks and Prometheus scrapes must still be answered, so with `PLATFORM_BIND` set the
master forks one more process that serves only the platform endpoints, through the same
app and pipeline (access checks, metrics, log line), on a small threaded server. It
runs no script, so nothing a script does can hold it up.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from typing import Any

from service.config import ConfigError

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
_PR_SET_PDEATHSIG = 1


def bind(address: str, variable: str = "PLATFORM_BIND") -> socket.socket:
    """Listen in the master, before gunicorn starts, so a taken port stops startup."""
    host, _, port = address.rpartition(":")
    try:
        return socket.create_server((host.strip("[]"), int(port)), backlog=128)
    except OSError as exc:
        raise ConfigError(variable, f"cannot listen on {address}: {exc.strerror}") from None


def start(server: Any, listeners: list[Any]) -> int:
    """Fork the plane from gunicorn's master (single-threaded, so fork is safe)."""
    pid = os.fork()
    if pid:
        return pid
    try:
        for name in _MASTER_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        # Gone with the master, however the master ends.
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        for listener in listeners:  # the workers' port is not ours
            listener.close()
        _serve(server)
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

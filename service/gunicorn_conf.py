"""gunicorn configuration used by `scriptgate serve` (and by the Docker image).

Importing this file prepares the multiprocess metrics directory, before gunicorn loads
the app and before any worker imports prometheus_client (which reads
PROMETHEUS_MULTIPROC_DIR once, at import).
"""

from __future__ import annotations

import os
import sys
import time

from service import multiproc
from service.config import ConfigError, Settings

try:
    _settings = Settings.from_env()
except ConfigError as exc:  # same one line as `scriptgate serve`, before any worker starts
    print(exc, file=sys.stderr)
    sys.exit(2)

try:
    multiproc.prepare_dir()
except multiproc.DirectoryInUse as exc:
    print(f"configuration error: {exc}", file=sys.stderr)
    sys.exit(2)
os.environ.setdefault("SCRIPTGATE_STARTED_AT", str(time.time()))

# Imported once in the master, now that PROMETHEUS_MULTIPROC_DIR is set, so every forked
# worker starts with them loaded (about half a second of CPU per worker otherwise). The
# app itself is still built in each worker, after fork (tracer threads, log descriptors).
import prometheus_client.multiprocess  # noqa: F401

import service.app  # noqa: F401

bind = [os.environ.get("SCRIPTGATE_BIND", "127.0.0.1:5000")]
workers = int(os.environ.get("SCRIPTGATE_WORKERS") or os.environ.get("WEB_CONCURRENCY") or 3)
worker_class = "sync"
# Above every script's own deadline, so the platform answers 504 itself and gunicorn only
# steps in for a script stuck inside a single C call.
timeout = int(_settings.max_script_timeout + 10)
graceful_timeout = 10
keepalive = 2
max_requests = int(os.environ.get("SCRIPTGATE_MAX_REQUESTS") or 0)
max_requests_jitter = int(os.environ.get("SCRIPTGATE_MAX_REQUESTS_JITTER") or 0)
# No files in the user's home or the working tree: no pid file, no control socket, and
# the heartbeat files in memory.
pidfile = None
control_socket_disable = True
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = None  # the platform writes its own JSON request log line
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "warning")
proc_name = "scriptgate"
# The platform reads X-Forwarded-For itself, from TRUSTED_PROXIES only.
forwarded_allow_ips = ""


# gunicorn halts the whole server when a worker exits with 3 (boot error) or 4 (app load
# error); a script calling os._exit(3) must only cost its own worker.
_HALTING_EXIT_CODES = (3, 4)


def _guard_exit_codes() -> None:
    real_exit = os._exit

    def _exit(code: int) -> None:
        real_exit(1 if code in _HALTING_EXIT_CODES else code)

    os._exit = _exit


def post_fork(server, worker):
    # Lets a worker ask to be recycled after a script it could not stop (timeouts.py).
    os.environ["SCRIPTGATE_GUNICORN_WORKER"] = str(os.getpid())
    _guard_exit_codes()


def child_exit(server, worker):
    multiproc.worker_exited(worker.pid)


def on_exit(server):
    multiproc.cleanup()

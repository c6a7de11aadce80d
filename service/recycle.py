"""The last resort: replace a worker that holds a script it could not stop.

A Python thread cannot be killed. When a script ignores its deadline (see deadline.py),
its caller has already had the 504; this asks gunicorn's worker to stop accepting,
answer every other request it holds, and exit, and gunicorn starts a fresh one. Outside
gunicorn (tests, `flask run`) it only logs: there is no one to start a replacement.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

EXIT_CODE = 1  # any code but gunicorn's 3 and 4, which would halt the whole server

_worker: Any = None
_requested = threading.Event()
log = logging.getLogger("scriptgate")


def attach(worker: Any) -> None:
    """Called in each gunicorn worker after fork (server.py's post_fork hook)."""
    global _worker
    _worker = worker
    _requested.clear()


def request(reason: str) -> None:
    """Ask for this worker to be replaced; idempotent."""
    if _requested.is_set():
        return
    _requested.set()
    worker = _worker
    if worker is None:
        log.warning("cannot recycle: not a gunicorn worker (%s)", reason)
        return
    log.warning("recycling worker %s: %s", os.getpid(), reason)
    # What gunicorn's own SIGTERM handler does: stop accepting, finish what is in flight.
    worker.alive = False
    defer = getattr(getattr(worker, "method_queue", None), "defer", None)
    if defer is not None:  # wake the gthread worker's poller so it notices at once
        defer(lambda: None)


def exit_if_requested(flush: Any = None) -> None:
    """From gunicorn's worker_exit hook: a stuck runner thread would block a normal
    interpreter exit, so leave at once once the worker has answered everything."""
    if _requested.is_set():
        if flush is not None:
            flush()
        os._exit(EXIT_CODE)

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

import logging
from typing import Any

from service.processes import fork_from_master

PROCESS_NAME = "sg-plane"  # /proc/PID/comm: tells the plane from gunicorn's workers


def start(server: Any, listeners: list[Any]) -> int:
    """Fork the plane from gunicorn's master (single-threaded, so fork is safe)."""
    return fork_from_master(listeners, lambda: _serve(server), PROCESS_NAME)


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

"""A request, frozen when its job is queued and rebuilt in the job worker.

The job worker runs the script on a Flask request built from this snapshot, so
`main(request)` sees the same method, URL, query, headers and body as a synchronous
call would, minus the credentials: keys, cookies and Authorization never reach the
queue (a script reads them in a synchronous call only).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from flask import Request
from werkzeug.test import EnvironBuilder

# Never stored: credentials, and what EnvironBuilder sets from the parts below.
DROPPED_HEADERS = frozenset(
    {
        "x-api-key",
        "x-admin-key",
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
    }
)


def snapshot(req: Request) -> bytes:
    """The request as JSON bytes (the body base64): what the job will run with."""
    frozen = {
        "method": req.method,
        "scheme": req.scheme,
        "host": req.host,
        "root_path": req.root_path,
        "path": req.path,
        "query": req.query_string.decode("latin-1"),
        "headers": [[k, v] for k, v in req.headers.items() if k.lower() not in DROPPED_HEADERS],
        "content_type": req.content_type,
        "remote_addr": req.remote_addr,
        "body": base64.b64encode(req.get_data(cache=True)).decode("ascii"),
    }
    return json.dumps(frozen).encode("utf-8")


def environ(data: bytes) -> dict[str, Any]:
    """A WSGI environ for `app.request_context`, from a snapshot."""
    frozen = json.loads(data)
    builder = EnvironBuilder(
        path=frozen["path"],
        base_url=f"{frozen['scheme']}://{frozen['host']}{frozen['root_path']}",
        query_string=frozen["query"],
        method=frozen["method"],
        headers=[tuple(pair) for pair in frozen["headers"]],
        data=base64.b64decode(frozen["body"]),
        content_type=frozen["content_type"],
        environ_base={"REMOTE_ADDR": frozen["remote_addr"] or ""},
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()

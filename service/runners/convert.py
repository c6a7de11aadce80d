"""Turn what a handler returned into a response, as the contract's table says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, current_app
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Response as WerkzeugResponse

TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"


class UnsupportedResult(TypeError):
    """The handler returned a type the contract does not define."""


def _body(value: Any) -> Response:
    if isinstance(value, WerkzeugResponse):
        return value  # type: ignore[return-value]
    if value is None:
        return Response(status=204)
    if isinstance(value, dict | list):
        # Serialised now, inside the caller's error handling: an object json cannot
        # encode is the script's fault (500), not the platform's.
        return current_app.json.response(value)
    if isinstance(value, str):
        return Response(value, content_type=TEXT)
    if isinstance(value, bytes | bytearray | memoryview):
        return Response(bytes(value), content_type=BINARY)
    if isinstance(value, Iterator):  # a generator: streamed, each chunk as it is made
        return Response(value, content_type=TEXT)
    raise UnsupportedResult(f"handler returned {type(value).__name__}")


def to_response(result: Any) -> Response:
    """dict/list → JSON, str → text, bytes → octet-stream, None → 204, Response as is,
    a generator (of str or bytes) → a text stream,
    and (body, status) / (body, status, headers) / (body, headers) as Flask does."""
    if not isinstance(result, tuple):
        return _body(result)
    if len(result) == 3:
        body, status, headers = result
    elif len(result) == 2:
        body, second = result
        status, headers = (
            (None, second) if isinstance(second, dict | list | Headers) else (second, None)
        )
    else:
        raise UnsupportedResult("a returned tuple must be (body, status[, headers])")
    response = _body(body)
    if status is not None:
        if isinstance(status, int):
            response.status_code = status
        else:
            response.status = str(status)
    if not 100 <= response.status_code <= 999:
        raise UnsupportedResult(f"handler returned status {status!r}")
    if headers:
        response.headers.update(headers)
    return response

"""A script's response read whole into a job's result, within JOB_MAX_RESULT_BYTES."""

from __future__ import annotations

from flask import Response

from service.http.call import streamed
from service.http.errors import ScriptFailed, ScriptTimedOut
from service.jobs.store import Result
from service.runners.failures import ScriptStopped, ScriptTimeout

# Not sent back with a result: the response is re-framed by the server answering it.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


class ResultTooLarge(Exception):
    """The response is over JOB_MAX_RESULT_BYTES: the job fails instead of filling
    the store."""


def capture(response: Response, limit: int) -> Result:
    """Status, headers and the whole body (a stream or a file read to its end). A script's
    stream that did not reach its end is the job's failure, as the call's would be."""
    chunks: list[bytes] = []
    size = 0
    try:
        body = response.response if response.direct_passthrough else response.iter_encoded()
        for chunk in body:
            size += len(chunk)
            if size > limit:
                raise ResultTooLarge(f"the response is over JOB_MAX_RESULT_BYTES ({limit})")
            chunks.append(chunk)
    finally:
        response.close()
    stream = streamed(response)
    if stream is not None and stream.failure is not None:
        if stream.stopped:
            raise ScriptStopped("stopped on request")
        if isinstance(stream.failure, ScriptTimeout):
            raise ScriptTimedOut()
        raise ScriptFailed() from stream.failure
    headers = response.headers.items()
    kept = tuple((k, v) for k, v in headers if k.lower() not in _FRAMING_HEADERS)
    return Result(response.status_code, kept, b"".join(chunks))

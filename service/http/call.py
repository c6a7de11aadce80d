"""A call of a script in one of its runners: the `run` stage of the pipeline, and of a job.

Under the script's deadline, in a `script.run` span; the runner's answer becomes the
contract's response or the refusal it stands for, and a streamed answer is handed on
chunk by chunk, its bookkeeping done when the stream ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from flask import Request, Response

from service.access.callers import SCRIPT_ENVIRON_KEYS
from service.http.context import RequestContext
from service.http.errors import (
    CallerError,
    InvalidParameters,
    PayloadTooLarge,
    ScriptFailed,
    ScriptTimedOut,
)
from service.observability.record import record_failure
from service.observability.scriptlog import ScriptLines
from service.runners.failures import ImportFailed, RunnerFailed, ScriptStopped, ScriptTimeout
from service.runners.pool import Hooks
from service.runners.stream import RunnerStream
from service.runtime import Runtime
from service.scripts.loader import LoadedScript, ScriptLoadError


class CallHooks(Hooks):
    """A call's log lines and `secret()` requests, answered for the runner's own zone;
    a job's lines and progress also go to its `output` (jobs/output.py)."""

    def __init__(
        self, rt: Runtime, ctx: RequestContext, lines: ScriptLines, output: Any = None
    ) -> None:
        self.rt = rt
        self.zone = ctx.zone
        self.lines = lines
        self.output = output

    def log(self, message: dict[str, Any]) -> None:
        self.lines.write(message)
        if self.output is not None:
            self.output.line(message)

    def progress(self, message: dict[str, Any]) -> None:
        if self.output is not None:
            self.output.progress(message.get("fraction"), message.get("message"))

    def secret(self, name: str) -> dict[str, Any]:
        try:
            return {"value": self.rt.secrets.read(name, self.zone)}
        except ValueError as exc:
            return {"error": str(exc), "invalid": True}
        except LookupError as exc:
            return {"error": str(exc)}


def call_handler(
    rt: Runtime,
    ctx: RequestContext,
    script: LoadedScript,
    req: Request,
    seconds: float,
    stop: Callable[[], bool] | None = None,
    *,
    check: bool = False,
    log_fields: dict[str, Any] | None = None,
    output: Any = None,
) -> Response:
    """The script's handler in one of its runners under its deadline, in a `script.run`
    span; with `check`, only its declared parameters are checked.

    Its failures become the contract's answers: 504 at the deadline, its own 4xx, 500
    for anything it raised. Jobs call this too, with `stop` (a cancel request), which
    ends in ScriptStopped for the job worker to report.
    """
    # A request whose span is sampled out would get a child span sampled out too: none is
    # made, and the script's log lines carry the server span's id.
    child = (
        rt.tracer.start_as_current_span(
            "script.run",
            record_exception=False,
            set_status_on_exception=False,
            end_on_exit=False,  # a stream's span ends with the stream
        )
        if ctx.server_span.is_recording() and not check
        else contextlib.nullcontext()
    )
    lines = ScriptLines(rt.log, ctx, rt.settings.script_output_limit, log_fields)
    stream: RunnerStream | None = None
    with child as span:
        try:
            try:
                hooks = CallHooks(rt, ctx, lines, output)
                runner = rt.runners.take(script.key)
                if runner is None:
                    runner = rt.scripts.start_runner(script, rt.runners, hooks)
                message = {
                    "environ": runner_environ(req.environ),
                    "check": check,
                    "budget": rt.settings.script_output_limit,
                }
                answer, body = rt.runners.call(
                    runner, message, req.get_data(), seconds, stop, hooks
                )
            except ScriptStopped:
                raise
            except ScriptTimeout as exc:
                record_failure(rt, ctx, span, "timeout", exc)
                raise ScriptTimedOut() from None
            except RunnerFailed as exc:
                record_failure(rt, ctx, span, exc.kind, exc)
                raise ScriptFailed("runner_died") from exc
            except (ScriptLoadError, ImportFailed) as exc:
                record_failure(rt, ctx, span, "import", exc)
                raise ScriptFailed() from exc
            if isinstance(body, RunnerStream):
                stream = body
                stream.on_close(lambda ended: _stream_ended(rt, ctx, span, lines, ended))
                response = Response(status=answer["status"], headers=answer["headers"])
                response.response = stream
                response.direct_passthrough = True  # chunks as the runner sends them
                return response
            return answer_of(rt, ctx, span, answer, body)
        finally:
            if stream is None:
                lines.close()
                if span is not None:
                    span.end()


def _stream_ended(
    rt: Runtime, ctx: RequestContext, span: Any, lines: ScriptLines, stream: RunnerStream
) -> None:
    """A streamed answer's end: its failure (a timeout cuts the stream) on the span, in
    the error counter and the log, as a call's would be; then the span ends."""
    lines.close()
    failure = stream.failure
    if isinstance(failure, ScriptTimeout):
        record_failure(rt, ctx, span, "timeout", failure)
    elif isinstance(failure, RunnerFailed):
        record_failure(rt, ctx, span, failure.kind, failure)
    if span is not None:
        span.set_attribute("scriptgate.stream_bytes", stream.sent)
        if stream.cut_short:
            span.set_attribute("scriptgate.stream_cut_short", True)
        span.end()


def streamed(response: Response) -> RunnerStream | None:
    """The runner stream a script's response is, when it is one."""
    body = response.response
    return body if isinstance(body, RunnerStream) else None


def answer_of(
    rt: Runtime, ctx: RequestContext, span: Any, answer: dict[str, Any], body: bytes
) -> Response:
    """The runner's answer as the contract's response, or the refusal it stands for."""
    kind = answer.get("t")
    if kind == "response":
        response = Response(status=answer["status"], headers=answer["headers"])
        response.response = [body]  # as is: Content-Length stays the script's (HEAD)
        return response
    if kind == "checked":
        return Response(status=204)
    if kind == "invalid":
        raise InvalidParameters(answer["fields"])
    if kind == "caller_error":
        raise CallerError(int(answer["status"]), str(answer["error"]), answer["headers"])
    if kind == "too_large":
        raise PayloadTooLarge()
    failure = RunnerFailed(
        "memory" if answer.get("kind") == "memory" else "exception",
        str(answer.get("message", "")),
        str(answer.get("traceback", "")),
        str(answer.get("type", "Exception")),
    )
    record_failure(rt, ctx, span, failure.kind, failure)
    raise ScriptFailed("memory" if failure.kind == "memory" else None) from failure


_ENVIRON_KEEP = SCRIPT_ENVIRON_KEYS | {"wsgi.url_scheme"}


def runner_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """The request's CGI variables and headers for the runner: text only (no server
    objects), the key headers already taken out (callers.hand_over)."""
    return {
        k: v
        for k, v in environ.items()
        if (isinstance(v, str) and "." not in k) or k in _ENVIRON_KEEP
    }

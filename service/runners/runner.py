"""Inside a runner: import one script, describe it, then serve its calls one at a time.

Everything here runs in a process that holds no platform secret and serves one script, so
whatever the script does to this process (patches, chdir, leaked memory, threads or
descriptors) stays here. The worker trusts nothing a runner says beyond the shape of its
messages: it sets every platform field of a log line itself.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from service.runners import protocol
from service.runners.channel import Channel, Extension, ForwardRecords, Output, RemoteSecrets
from service.runners.convert import to_response
from service.runners.limits import OPEN_FILES, ended_children
from service.runners.script_import import (
    Imported,
    ScriptLoadError,
    describe_error,
    import_script,
)
from service.scripts.params import arguments
from service.scripts.problems import BadParameters
from service.scripts.revision import root_of

SCRIPT_LOGGER = "scriptgate_script"  # parent of every script module's logger
MAX_CHUNK = 1024 * 1024  # a streamed chunk larger than this is sent in pieces
MAX_THREADS = 256  # a runner past this many threads after a call is replaced
# A thread's stack counts in the memory limit (RLIMIT_DATA): glibc's default, 8 MiB, would
# let a 512M script start only about 60 threads.
THREAD_STACK_BYTES = 1024 * 1024


class _RunnerFlask(Flask):
    def create_url_adapter(self, request: Any) -> Any:
        """None for a request: the app has no URL rules, and werkzeug would raise and
        catch a NotFound for every call (a third of a hello call's time in a runner)."""
        if request is not None:
            return None
        return super().create_url_adapter(request)


def build_app(max_body_bytes: int, channel: Channel, output: Output | None = None) -> Flask:
    """The Flask app a script's request, `jsonify` and `send_file` live in."""
    app = _RunnerFlask("scriptgate_runner", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["scriptgate"] = Extension(RemoteSecrets(channel), channel, output)
    return app


def serve(sock: socket.socket, path: str, root: str, log_level: str, max_body_bytes: int) -> None:
    """The runner's life: hello (the description, or why the import failed), then calls."""
    channel = Channel(sock)
    threading.stack_size(THREAD_STACK_BYTES)
    signal.signal(signal.SIGUSR1, lambda _, frame: _send_stack(channel, frame, root))
    output = Output(channel)
    logging.getLogger().addHandler(ForwardRecords(channel, output))
    logging.getLogger(SCRIPT_LOGGER).setLevel(log_level)
    app = build_app(max_body_bytes, channel, output)
    root = root_of(path, root)  # the real folder (a git-sync worktree) the path lies in
    os.chdir(root)
    try:
        imported = import_script(path, root)
    except ScriptLoadError as exc:
        output.drain()
        channel.send(
            {
                "t": "hello",
                "error": describe_error(exc, path, root),
                "state": exc.state,
                "traceback": _traceback(exc),
            }
        )
        return
    output.drain()
    channel.send({"t": "hello", "info": imported.description})
    while True:
        message = channel.reader.message()
        body = (
            channel.reader.message() if isinstance(message, dict) and message.get("body") else b""
        )
        if not isinstance(message, dict) or not isinstance(body, bytes):
            return
        if message.get("t") != "call":
            return
        os.chdir(root)  # every call starts in the scripts folder, whatever the last did
        output.start(int(message.get("budget", 1 << 62)))
        reply, reply_body = _call(app, imported, message, body, channel)
        output.drain()
        # Said in the answer itself, so the worker never hands a worn-out runner a call.
        failed = reply.get("failed") if reply.get("t") == protocol.STREAM_END else reply
        memory = isinstance(failed, dict) and failed.get("kind") == "memory"
        why = "it ran out of memory" if memory else _worn_out()
        if why:
            reply["retire"] = why
        channel.send(reply, reply_body)
        if why:
            return


def _send_stack(channel: Channel, frame: Any, root: str) -> None:
    """Past its deadline: where the main thread is, from the script's first frame on, for
    the worker's log line. The lock may be held by the code this signal interrupted, so
    it is not waited for long."""
    if not channel.lock.acquire(timeout=0.02):
        return
    try:
        frames = traceback.extract_stack(frame)
        first = next((i for i, f in enumerate(frames) if f.filename.startswith(root)), 0)
        stack = "".join(traceback.format_list(frames[first:][-32:]))
        channel.sock.sendall(protocol.encode({"t": "stack", "stack": stack}))
    finally:
        channel.lock.release()


def _environ(message: dict[str, Any], body: bytes) -> dict[str, Any]:
    environ: dict[str, Any] = dict(message["environ"])
    environ.update(
        {
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
    )
    return environ


def _call(
    app: Flask, imported: Imported, message: dict[str, Any], body: bytes, channel: Channel
) -> tuple[dict[str, Any], bytes | None]:
    """One call: the reply message, and the response body when there is one. A streamed
    response (a generator) is sent here as it is made: its head, its chunks, and the
    reply is its `end`."""
    environ = _environ(message, body)
    try:
        with app.request_context(environ):
            req = request._get_current_object()  # type: ignore[attr-defined]
            values = arguments(imported.params, req)
            if message.get("check"):
                return {"t": "checked"}, None
            response = to_response(imported.handler(req, **values))
            if response.is_streamed and not response.direct_passthrough:
                return _stream(channel, response, environ), None
            try:
                data = b"".join(response.get_app_iter(environ))
            finally:
                response.close()
            headers = [[k, v] for k, v in response.headers.items()]
            return {"t": "response", "status": response.status, "headers": headers}, data
    except BadParameters as exc:
        return {"t": "invalid", "fields": exc.fields}, None
    except HTTPException as exc:
        return _caller_error(exc, environ)
    except MemoryError as exc:
        return _failure("memory", exc), None
    except BaseException as exc:  # a script's own BaseException too: the script's fault
        return _failure("exception", exc), None


def _stream(channel: Channel, response: Any, environ: dict[str, Any]) -> dict[str, Any]:
    """Head, then each chunk as the script yields it (protocol.STREAM_HEAD, bytes frames,
    STREAM_END). The worker answers the caller as they come and holds the deadline; an
    exception the generator raises ends the stream and is reported in the `end`."""
    headers = [[k, v] for k, v in response.headers.items()]
    channel.send({"t": protocol.STREAM_HEAD, "status": response.status, "headers": headers})
    end: dict[str, Any] = {"t": protocol.STREAM_END}
    try:
        for chunk in response.get_app_iter(environ):
            for start in range(0, len(chunk), MAX_CHUNK):
                channel.send_bytes(bytes(chunk[start : start + MAX_CHUNK]))
    except MemoryError as exc:
        end["failed"] = _failure("memory", exc)
    except BaseException as exc:  # the script's generator raised: its fault
        end["failed"] = _failure("exception", exc)
    finally:
        try:
            response.close()
        except Exception as exc:
            end.setdefault("failed", _failure("exception", exc))
    return end


def _failure(kind: str, exc: BaseException) -> dict[str, Any]:
    return {
        "t": "failed",
        "kind": kind,
        "type": type(exc).__name__,
        "message": str(exc)[:1000],
        "traceback": _traceback(exc),
    }


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # a script's exception whose str() raises
        return type(exc).__name__


def _caller_error(exc: HTTPException, environ: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """A script's `abort(...)` or a bad request body it found: the caller's error.

    A redirect or a response the script attached is answered as it is; an error status
    becomes the JSON error body with the exception's own description.
    """
    status = exc.code or 500
    if exc.response is not None or status < 400:
        response = exc.get_response(environ)
        data = b"".join(response.get_app_iter(environ))
        headers = [[k, v] for k, v in response.headers.items()]
        return {"t": "response", "status": response.status, "headers": headers}, data
    if status == 413:
        return {"t": "too_large"}, b""
    description = _own_description(exc) or _own_description(exc.__cause__) or exc.name
    description = description if description != exc.name else description.lower()
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return {
        "t": "caller_error",
        "status": status,
        "error": description or "error",
        "headers": headers,
    }, b""


def _own_description(exc: BaseException | None) -> str | None:
    """An HTTPException's description when someone wrote one, not its class default.

    Flask re-raises a bad JSON body as a bare BadRequest outside debug mode; the cause
    keeps the parser's message ("Failed to decode JSON object: ..."), which names no
    path and no secret and tells the caller what to fix.
    """
    if isinstance(exc, HTTPException) and exc.description != type(exc).description:
        return exc.description
    return None


def _worn_out() -> str:
    """Why this runner should not serve another call ('' when it may): descriptors or
    threads near their limits. Finished children are reaped here (zombies).

    On every call, so cheaply: the lowest free descriptor (what dup returns) climbs as a
    script leaks descriptors, and Python's own thread count is a dictionary's length.
    """
    for _ in ended_children():
        pass
    try:
        lowest_free = os.dup(0)
    except OSError:
        return "it is out of descriptors"
    os.close(lowest_free)
    if lowest_free > OPEN_FILES * 0.8:
        return f"descriptors leaked ({lowest_free} open)"
    threads = threading.active_count()
    if threads > MAX_THREADS:
        return f"{threads} threads"
    return ""

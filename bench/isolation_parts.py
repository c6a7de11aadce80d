"""Where a runner call's extra time goes: each step the runner design adds to a warm hello
call, timed alone in this process (best of 5 repeats, µs per call).

    .venv/bin/python bench/isolation_parts.py

The steps are the service's own functions, called as a call calls them: the worker's
environ for the runner and the frames both ways (JSON), a round trip over a socketpair to
another process, the runner's second Flask request around the script, and its checks
after each call. What they do not add up to is scheduling: two processes wake each
other twice per call, which no single step shows (compare with bench/isolation.py's
paired in-process difference).
"""

from __future__ import annotations

import os
import socket
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inproc import environ
from service.http.call import runner_environ
from service.runners import protocol, runner
from service.runners.channel import Channel
from service.runners.script_import import import_script

SCRIPTS = Path(__file__).resolve().parent / "scripts"
ROUND_TRIPS = 2000


def best_us(call: object, number: int) -> float:
    timer = timeit.Timer(call)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def round_trip_us(message: bytes, reply: bytes) -> float:
    """A call (message and body frames) to a child process and its answer (message and
    body) back, as a call and its response go."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo: reads one frame, answers `reply`, until the socket closes
        ours.close()
        reader = protocol.Reader(theirs)
        try:
            while True:
                reader.message()
                reader.message()
                theirs.sendall(reply)
        finally:
            os._exit(0)
    theirs.close()
    reader = protocol.Reader(ours)

    def once() -> None:
        ours.sendall(message)
        reader.message()
        reader.message()

    try:
        return best_us(once, ROUND_TRIPS)
    finally:
        ours.close()
        os.waitpid(pid, 0)


def main() -> int:
    os.chdir(SCRIPTS)
    base = environ()
    base["REMOTE_ADDR"] = "127.0.0.1"
    path = str(SCRIPTS / "api" / "hello.py")
    imported = import_script(path, str(SCRIPTS))
    left, right = socket.socketpair()
    app = runner.build_app(1 << 20, Channel(left))
    call = {"environ": runner_environ(base), "check": False, "t": "call", "body": True}
    frame = protocol.encode(call) + protocol.encode_bytes(b"")
    reply, body = runner._call(app, imported, call, b"")
    answer = protocol.encode(reply) + protocol.encode_bytes(body or b"")

    def decode(data: bytes) -> None:
        protocol.decode(data)

    def handler_alone() -> None:
        with app.test_request_context("/api/hello.py"):
            from flask import request

            imported.handler(request._get_current_object())  # type: ignore[attr-defined]

    parts = {
        "worker: the environ for the runner (runner_environ)": (
            lambda: runner_environ(base),
            20000,
        ),
        "worker: encode the call frame (JSON)": (lambda: protocol.encode(call), 20000),
        "runner: decode the call frame": (lambda: decode(frame), 20000),
        "runner: encode the answer frame": (lambda: protocol.encode(reply), 20000),
        "worker: decode the answer frame": (lambda: decode(answer), 20000),
        "socket round trip to another process (call and answer frames)": (
            lambda: round_trip_us(frame, answer),
            1,
        ),
        "runner: request context, parameters, handler, response (_call)": (
            lambda: runner._call(app, imported, call, b""),
            2000,
        ),
        "  of which the script's handler in a bare request context": (handler_alone, 2000),
        "runner: after-call checks (_worn_out: /proc/self/fd, stat, waitpid)": (
            runner._worn_out,
            2000,
        ),
        "runner: chdir to the scripts folder": (lambda: os.chdir(SCRIPTS), 20000),
    }
    print(f"{'step':<70}{'µs':>8}")
    for label, (step, number) in parts.items():
        us = step() if number == 1 else best_us(step, number)
        print(f"{label:<70}{us:>8.1f}")
    left.close()
    right.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

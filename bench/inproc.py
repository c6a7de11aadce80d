"""One contender in one process, called as gunicorn calls it, with no HTTP around it.

    python bench/inproc.py CONTENDER --workdir DIR --count N [--warmup W] [--marks]
    python bench/inproc.py CONTENDER --workdir DIR --serve   # rounds on demand
    python bench/inproc.py scriptgate --tree DIR ...           # another tree's service package

The parent (bench/instructions.py) sets the environment a contender reads (the OTLP
sink's endpoint, the sampler, PROMETHEUS_MULTIPROC_DIR) before this process starts,
since the libraries read it at import. `--marks` brackets the counted requests with two
calls to getpgid(), which nothing else in the loop makes and at which valgrind's
callgrind is told to dump its counters (and zero them, in every thread): the second dump
holds the counted requests alone, without start-up, imports or warm-up. (Zeroing at a
mark instead would zero only the calling thread, and a runner thread's history would
leak into the count.) `--serve` reads "N" lines on stdin and answers each with the wall
and CPU seconds of N requests, so the parent can interleave the contenders' rounds.

Every loop ends with the tracer provider's force_flush, so spans still queued in its
batch processor are encoded and sent inside the loop that made them. A round's CPU time
includes this process's descendants (a Scriptgate worker's zygote and runners, where the
script runs), read from /proc, since process_time() counts this process alone. `--tree`
imports `service` from another checkout (bench/isolation.py's "before" contender) with
the same venv and the same script body; at the second mark, `--marks` writes the process
tree to `tree.json` in the workdir, so the parent knows which callgrind files are runners.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PATH = "/api/hello.py"
API_KEY = "bench-api-key"
EXPECTED = b'{"message":"Hello, Guest!"}'
# What wrk sends, as gunicorn hands it over: a keyed call from the allowed address.
HEADERS = {"Host": "127.0.0.1:8000", "X-API-Key": API_KEY}


def _bare() -> tuple[Callable, Callable[[], None]]:
    from bare_flask import app

    return app, lambda: None


def _traced_bare() -> tuple[Callable, Callable[[], None]]:
    """Bare Flask plus only opentelemetry-instrumentation-flask, spans sampled out."""
    import bare_flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    FlaskInstrumentor().instrument_app(bare_flask.app, tracer_provider=provider)
    return bare_flask.app, provider.force_flush


def _assembly() -> tuple[Callable, Callable[[], None]]:
    import assembly

    return assembly.app, assembly.provider.force_flush


# Scriptgate with one feature left out, for the breakdown of where its time goes
# (tracing is left out by the parent, with OTEL_SDK_DISABLED=true).
WITHOUT = {
    "metrics": {"metrics_enabled": False, "multiproc_dir": None},
    "log": {"log_stdout": False, "log_file": None},
    "access": {"api_auth": False, "api_trusted_ips": (), "trusted_proxies": ()},
    "exemplars": {"metrics_exemplars": False},
}


def _scriptgate(without: tuple[str, ...] = ()) -> tuple[Callable, Callable[[], None]]:
    """Built like a gunicorn worker builds it: the bench server's settings, read once."""
    from service.app import create_app
    from service.config import Settings

    overrides = {k: v for feature in without for k, v in WITHOUT[feature].items()}
    app = create_app(Settings.from_env(), **overrides)
    return app, app.extensions["scriptgate"].tracer_provider.force_flush


BUILDERS = {
    "bare": _bare,
    "traced_bare": _traced_bare,
    "assembly": _assembly,
    "scriptgate": _scriptgate,
}


def environ() -> dict:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(
        path=PATH,
        headers=HEADERS,
        environ_base={"REMOTE_ADDR": "127.0.0.1", "SERVER_SOFTWARE": "gunicorn/bench"},
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def serve(app: Callable, base: dict, count: int) -> None:
    """`count` calls the way gunicorn makes them; fail loudly on a wrong answer."""
    answers: list[str] = []

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        answers.append(status)

    for _ in range(count):
        env = dict(base)
        env["wsgi.input"] = io.BytesIO()
        body = app(env, start_response)
        try:
            data = b"".join(body)
        finally:
            if hasattr(body, "close"):
                body.close()
        if not answers[-1].startswith("200") or data.strip() != EXPECTED:
            raise RuntimeError(f"{PATH} answered {answers[-1]} {data[:200]!r}")
        answers.clear()


def descendants(pid: int) -> dict[int, list[int]]:
    """Each process below `pid` with its own children, from /proc (every thread's list)."""
    tree: dict[int, list[int]] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        children: list[int] = []
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children += [int(c) for c in f.read().split()]
        except OSError:
            pass  # gone meanwhile
        tree[parent] = children
        todo += children
    return tree


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds() -> float:
    """This process's CPU time plus its live descendants' (user + system)."""
    total = time.process_time()
    for pid in descendants(os.getpid()):
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender", choices=sorted(BUILDERS))
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=0, help="requests to count")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--marks", action="store_true", help="getpgid() before and after the count")
    parser.add_argument("--serve", action="store_true", help="answer round requests on stdin")
    parser.add_argument("--without", action="append", default=[], choices=sorted(WITHOUT))
    parser.add_argument("--tree", type=Path, default=REPO, help="where `service` is imported from")
    args = parser.parse_args(argv)
    os.chdir(args.workdir)
    sys.path[:0] = [str(BENCH / "apps"), str(args.tree)]
    # The platform logs to stdout as under gunicorn; here that goes nowhere, and the
    # replies to the parent go through a descriptor of their own.
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    build = BUILDERS[args.contender]
    app, flush = build(tuple(args.without)) if args.without else build()
    base = environ()
    serve(app, base, args.warmup)
    flush()
    if args.serve:
        reply.write("ready\n")
        for line in sys.stdin:
            count = int(line)
            wall, cpu = time.perf_counter(), tree_cpu_seconds()
            serve(app, base, count)
            flush()
            reply.write(f"{time.perf_counter() - wall} {tree_cpu_seconds() - cpu}\n")
        return 0
    if args.marks:
        os.getpgid(0)  # callgrind: --dump-before=getpgid, the first dump
    serve(app, base, args.count)
    flush()
    if args.marks:
        os.getpgid(0)  # the second dump: the counted requests
        tree = {str(k): v for k, v in descendants(os.getpid()).items()}
        Path("tree.json").write_text(json.dumps({"worker": os.getpid(), "children": tree}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

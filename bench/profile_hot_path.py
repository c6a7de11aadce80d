"""Profile Scriptgate's per-request hot path in one process, next to bare Flask.

Builds the app with create_app(Settings(...)) the way a gunicorn worker does (multiprocess
metrics, API key, IP allowlist, JSON log to a file and to stdout) and calls the WSGI app
directly with a prepared environ, so the figures hold the platform's cost and not a test
client's or HTTP's. Prints, in CPU microseconds per request (steady on a busy machine):
bare Flask, Scriptgate, and Scriptgate with one feature at a time turned off; then
cProfile's own time grouped by library and its top entries.

    .venv/bin/python bench/profile_hot_path.py [--requests 2000] [--rounds 7] [--top 25]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.inproc import API_KEY, serve  # noqa: E402
from bench.inproc import environ as request_environ  # noqa: E402

BENCH = REPO / "bench"

# Which library a profiled function belongs to, first match wins.
AREAS = (
    ("scriptgate service/", f"{REPO}/service/"),
    ("benchmark script", f"{BENCH}/scripts/"),
    ("opentelemetry", "/opentelemetry/"),
    ("prometheus_client", "/prometheus_client/"),
    ("flask", "/flask/"),
    ("werkzeug", "/werkzeug/"),
    ("python-json-logger", "/pythonjsonlogger/"),
    ("logging (stdlib)", "/logging/"),
    ("json (stdlib)", "/json/"),
)


def _bare_app() -> Callable:
    sys.path.insert(0, str(BENCH / "apps"))
    from bare_flask import app

    return app


def _traced_bare_app() -> Callable:
    """Bare Flask plus only opentelemetry-instrumentation-flask: what the library costs."""
    from flask import Flask, request
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    app = Flask("traced_bare")

    @app.route("/api/hello.py")
    def hello() -> dict:
        return {"message": f"Hello, {request.args.get('name', 'Guest')}!"}

    FlaskInstrumentor().instrument_app(app, tracer_provider=TracerProvider())
    return app


def _assembly_app(tmp: Path) -> Callable:
    os.environ["BENCH_LOG_FILE"] = str(tmp / "assembly.log")
    sys.path.insert(0, str(BENCH / "apps"))
    from assembly import app

    return app


def _scriptgate_app(tmp: Path, **overrides: object) -> Callable:
    from service.app import create_app
    from service.config import Settings, parse_networks

    settings = Settings(
        scripts_dir=(BENCH / "scripts").resolve(),
        api_keys=(API_KEY,),
        api_trusted_ips=parse_networks("API_TRUSTED_IPS", "127.0.0.1/32"),
        log_file=tmp / "framework.log",
        multiproc_dir=Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]),
    )
    return create_app(settings, **overrides)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


FULL = 3  # index of "Scriptgate, everything on" in variants()


def variants(tmp: Path) -> list[tuple[str, Callable]]:
    """References, Scriptgate with everything on, then with one feature off at a time."""
    with _env("OTEL_SDK_DISABLED", "true"):  # read once, when the provider is built
        untraced = _scriptgate_app(tmp)
    return [
        ("bare Flask", _bare_app()),
        ("bare Flask + otel-instrumentation-flask", _traced_bare_app()),
        ("assembly (bench/apps/assembly.py)", _assembly_app(tmp)),
        ("Scriptgate, everything on", _scriptgate_app(tmp)),
        ("  METRICS=off", _scriptgate_app(tmp, metrics_enabled=False, multiproc_dir=None)),
        ("  no stdout log (file only)", _scriptgate_app(tmp, log_stdout=False)),
        ("  no log at all", _scriptgate_app(tmp, log_stdout=False, log_file=None)),
        ("  OTEL_SDK_DISABLED=true (no-op spans)", untraced),
        ("  no API key, no allowlist", _scriptgate_app(tmp, api_auth=False, api_trusted_ips=())),
    ]


@contextlib.contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    """The platform also logs to stdout (fd 1); send it where gunicorn's would go, not here."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def per_request_costs(
    apps: list[tuple[str, Callable]], environ: dict, count: int, rounds: int
) -> list[tuple[str, float]]:
    """CPU microseconds (user+sys) per request for each app: the best of `rounds` loops.

    The apps take turns round by round, so a busy spell on the machine hits them all, and
    the best loop of each is the one least disturbed.
    """
    for _, app in apps:
        serve(app, environ, 100)  # warm: imports the script, fills caches
    best = {label: float("inf") for label, _ in apps}
    for _ in range(rounds):
        for label, app in apps:
            started = time.process_time()
            serve(app, environ, count)
            best[label] = min(best[label], (time.process_time() - started) / count)
    return [(label, best[label] * 1e6) for label, _ in apps]


def _area(filename: str) -> str:
    for name, marker in AREAS:
        if marker in filename:
            return name
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins / C calls"
    return "other (stdlib: os, posixpath, signal, ...)"


def by_area(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own time (tottime) summed per library: where the CPU actually goes."""
    totals: dict[str, float] = {}
    for (filename, _line, _func), row in stats.stats.items():  # type: ignore[attr-defined]
        totals[_area(filename)] = totals.get(_area(filename), 0.0) + row[2]
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)


def profile(app: Callable, environ: dict, count: int) -> pstats.Stats:
    serve(app, environ, 200)
    profiler = cProfile.Profile()
    profiler.enable()
    serve(app, environ, count)
    profiler.disable()
    return pstats.Stats(profiler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="profiled requests")
    parser.add_argument("--loop", type=int, default=300, help="requests per timed loop")
    parser.add_argument("--rounds", type=int, default=7, help="timed loops per variant")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="scriptgate-profile-") as tmp_name:
        tmp = Path(tmp_name)
        # Read by prometheus_client at import, so set before service is imported.
        (tmp / "metrics").mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "metrics")
        environ = request_environ()
        apps = variants(tmp)
        with _stdout_to_devnull():
            costs = per_request_costs(apps, environ, args.loop, args.rounds)
            stats = profile(apps[FULL][1], environ, args.requests)

    bare_us, full_us = costs[0][1], costs[FULL][1]
    print(f"CPU per request, in process, no HTTP (best of {args.rounds} loops of {args.loop}):")
    for label, us in costs:
        note = f"  {us / bare_us:4.1f}x bare" if not label.startswith(" ") else ""
        if label.startswith("  "):
            note = f"  saves {full_us - us:5.0f} us"
        print(f"  {label:<42} {us:7.0f} us{note}")
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\nprofiled own time by library ({args.requests} requests, cProfile inflates it):")
    for name, seconds in by_area(stats):
        share = seconds / total * 100
        print(f"  {name:<36} {seconds / args.requests * 1e6:8.1f} us/request  {share:5.1f}%")
    for order in ("cumulative", "tottime"):
        print(f"\ntop {args.top} by {order}:")
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(args.top)
        lines = out.getvalue().splitlines()
        start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
        print("\n".join(ln.replace(str(REPO) + "/", "") for ln in lines[start:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

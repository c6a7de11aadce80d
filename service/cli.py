"""Scriptgate: every Python file in a folder is an HTTP endpoint.

Write scripts/hello.py:

    def main(request, name: str = "Guest"):
        return {"message": f"Hello, {name}!"}

then serve the folder and call it:

    scriptgate serve
    curl 'http://127.0.0.1:5000/hello.py?name=Rico'

Scripts under scripts/api/ answer at /api/... to callers sending X-API-Key: $API_KEY,
scripts under scripts/admin/ at /admin/... to X-Admin-Key: $ADMIN_API_KEY; a zone whose
key is not set stays closed. http://127.0.0.1:5000/_platform/docs lists every script
you may call and lets you try it.

Settings come from the environment (API_KEY, ADMIN_API_KEY, SCRIPT_TIMEOUT, LOG_LEVEL,
...: the README's configuration table); options override them. `scriptgate COMMAND -h`
shows a command's options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

from service.access import keys_cli
from service.config import ConfigError, Settings
from service.scripts.resolve import ZONES, list_scripts, located_scripts

EXIT_CONFIG = 2


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment, with the command line's options laid over it; built once."""
    overrides = {
        "SCRIPTS_DIR": args.scripts,
        "BIND": getattr(args, "bind", None),
        "PLATFORM_BIND": getattr(args, "platform_bind", None),
        "WORKERS": _text(getattr(args, "workers", None)),
        "THREADS": _text(getattr(args, "threads", None)),
        "WORKER_CLASS": getattr(args, "worker_class", None),
        "JOB_WORKERS": _text(getattr(args, "job_workers", None)),
    }
    env = dict(args.environ)
    env.update({name: value for name, value in overrides.items() if value is not None})
    if (getattr(args, "bind", None) or "").isdigit():  # `--bind 5055`: say what it needs
        raise ConfigError("BIND", f"{args.bind!r} is not HOST:PORT (try 127.0.0.1:{args.bind})")
    return Settings.from_env(env)


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def without_secrets(args: argparse.Namespace) -> Settings:
    """The settings, in a process whose environment holds no platform secret: scripts
    run in it (handoff.py re-executes the command without them, once)."""
    from service import handoff

    if args.settings_fd is not None:  # re-executed without the secrets
        return handoff.receive(args.settings_fd)
    settings = settings_from(args)
    if handoff.secrets_in(args.environ):
        handoff.reexec_without_secrets(settings, args.environ)
    return settings


def serve(args: argparse.Namespace) -> int:
    from service.server import serve as run_server

    return run_server(without_secrets(args))


def keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from service.access import keys_cli

    if args.keys_command == "new":
        return keys_cli.new(args)
    configured = args.environ.get("KEYS_FILE", "").strip()
    return keys_cli.check(args, Path(configured) if configured else None)


def jobs(args: argparse.Namespace) -> int:
    from service.jobs.command import run_jobs

    return run_jobs(without_secrets(args))


def routes(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    listing = {zone: list_scripts(settings.scripts_dir, zone) for zone in ZONES}
    print(json.dumps(listing, indent=2))
    return 0


def check(args: argparse.Namespace) -> int:
    """Import every script the way a worker would; name each one that fails."""
    from service.app import create_app
    from service.scripts.describe import describe_route

    settings = settings_from(args)
    app = create_app(settings, log_file=None, log_stdout=False, metrics_enabled=False)
    rt = app.extensions["scriptgate"]
    listed = [
        (zone, rel, real)
        for zone in ZONES
        for rel, real in located_scripts(settings.scripts_dir, zone)
    ]
    width = max((len(shown_name(zone, rel)) for zone, rel, _ in listed), default=0)
    failures = 0
    for zone, rel, real in listed:
        entry = describe_route(rt, zone, rel, real)
        shown = shown_name(zone, rel)
        if entry["state"] != "ok":
            failures += 1
            print(f"FAIL {shown}: {entry['state']}: {entry['error']}", file=sys.stderr)
            continue
        methods = ",".join(m for m in entry["methods"] if m != "HEAD")
        params = ", ".join(entry.get("parameters", {}))
        line = f"ok   {shown:<{width}}  {methods:<14}  timeout {entry['timeout']:g} s"
        print(line + (f"  params: {params}" if params else ""))
        if "warning" in entry:
            print(f"WARN {shown}: {entry['warning']}", file=sys.stderr)
    print(f"{len(listed) - failures} of {len(listed)} scripts OK")
    return 1 if failures else 0


def shown_name(zone: str, rel: str) -> str:
    return rel if zone == "root" else f"{zone}/{rel}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scriptgate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_serve = sub.add_parser(
        "serve",
        help="serve the scripts folder (Ctrl-C stops it)",
        description="Serve the scripts folder with gunicorn until Ctrl-C. A script added or "
        "edited is served on the next request, without a restart.",
        epilog="example: API_KEY=my-key scriptgate serve --bind 127.0.0.1:8000 --scripts ./scripts",
    )
    p_serve.add_argument(
        "--bind",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:5000, $BIND; 0.0.0.0:PORT for every interface)",
    )
    p_serve.add_argument(
        "--platform-bind",
        metavar="HOST:PORT",
        help="HOST:PORT for /_platform/* in a process of its own, so health checks and "
        "scrapes are answered while scripts fill every worker ($PLATFORM_BIND; default off)",
    )
    p_serve.add_argument(
        "--workers", type=int, metavar="N", help="worker processes (default 3, $WORKERS)"
    )
    p_serve.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads per worker: scripts running at once in each (default 8, $THREADS)",
    )
    p_serve.add_argument(
        "--worker-class",
        choices=("gthread", "sync"),
        help="gthread (default): scripts run in threads; sync: one script per process",
    )
    p_serve.add_argument(
        "--job-workers", type=int, help="job worker processes (default 2, $JOB_WORKERS; 0: none)"
    )
    p_jobs = sub.add_parser("jobs", help="run job workers only, apart from the HTTP servers")
    p_jobs.add_argument(
        "--workers", dest="job_workers", type=int, help="job worker processes (default 2)"
    )
    p_jobs.add_argument(
        "--platform-bind", help="HOST:PORT for /_platform/health and metrics (default off)"
    )
    for p in (p_serve, p_jobs):  # only for the re-executed command itself (handoff.py)
        p.add_argument("--settings-fd", type=int, help=argparse.SUPPRESS)
    p_check = sub.add_parser(
        "check",
        help="import every script and say which are broken and why (exit 1 if any)",
        description="Import every script the way a worker would. Prints one line per script "
        "(methods, effective timeout, declared parameters) and, on stderr, each one that "
        "fails: its state (import_error, no_handler), the error and its line, and for a "
        "missing package where to add it.",
    )
    p_routes = sub.add_parser(
        "routes",
        help="print the scripts each zone serves, as JSON",
        description="Print the scripts of each zone (root, api, admin) as JSON, "
        "without importing them.",
    )
    for p in (p_serve, p_jobs, p_routes, p_check):
        p.add_argument(
            "--scripts", metavar="DIR", help="scripts folder (default ./scripts, $SCRIPTS_DIR)"
        )
    p_serve.set_defaults(func=serve)
    p_jobs.set_defaults(func=jobs)
    p_routes.set_defaults(func=routes)
    p_check.set_defaults(func=check)
    keys_cli.add_parser(sub).set_defaults(func=keys)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The one place the command reads its environment; every command gets it on `args`."""
    args = build_parser().parse_args(argv)
    args.environ = dict(os.environ if environ is None else environ)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())

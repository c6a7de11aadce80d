"""`scriptgate serve|routes|check`: argument parsing only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from service.config import ConfigError, Settings
from service.resolve import ZONES, list_scripts, locate, parse_target, zone_dir

EXIT_CONFIG = 2


def _settings(scripts: str | None) -> Settings:
    if scripts:
        os.environ["SCRIPTS_DIR"] = scripts
    return Settings.from_env()


def serve(args: argparse.Namespace) -> int:
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:  # serve prepares it anyway; creating it here lets validation pass
        try:
            Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                "PROMETHEUS_MULTIPROC_DIR", f"cannot create {metrics_dir!r}: {exc}"
            ) from None
    _settings(args.scripts)  # fail here, with one line, before gunicorn starts
    os.environ["SCRIPTGATE_BIND"] = args.bind
    if args.workers:
        os.environ["SCRIPTGATE_WORKERS"] = str(args.workers)
    conf = Path(__file__).with_name("gunicorn_conf.py")
    argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "service.wsgi:create_app()"]
    os.execv(sys.executable, argv)  # noqa: S606 - gunicorn replaces this process
    return 0  # not reached


def routes(args: argparse.Namespace) -> int:
    settings = _settings(args.scripts)
    listing = {zone: list_scripts(settings.scripts_dir, zone) for zone in ZONES}
    print(json.dumps(listing, indent=2))
    return 0


def check(args: argparse.Namespace) -> int:
    """Import every script the way a worker would; name each one that fails."""
    from service.loader import ScriptCache, ScriptLoadError

    settings = _settings(args.scripts)
    cache = ScriptCache(settings.scripts_dir, settings.script_timeout, settings.max_script_timeout)
    failures = 0
    total = 0
    for zone in ZONES:
        for rel in list_scripts(settings.scripts_dir, zone):
            total += 1
            shown = os.path.join(zone_dir(settings.scripts_dir, zone), rel)
            try:
                cache.load(locate(settings.scripts_dir, parse_target(_url(zone, rel))))
            except ScriptLoadError as exc:
                failures += 1
                cause = exc.__cause__
                detail = f"{exc}: {cause}" if cause is not None else str(exc)
                print(f"FAIL {shown}: {detail}", file=sys.stderr)
    print(f"{total - failures} of {total} scripts OK")
    return 1 if failures else 0


def _url(zone: str, rel: str) -> str:
    return f"/{rel}" if zone == "root" else f"/{zone}/{rel}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scriptgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the platform under gunicorn")
    p_serve.add_argument("--bind", default="127.0.0.1:5000", help="HOST:PORT (default %(default)s)")
    p_serve.add_argument("--workers", type=int, default=None, help="gunicorn workers (default 3)")
    p_routes = sub.add_parser("routes", help="print the routes as JSON")
    p_check = sub.add_parser("check", help="import every script; non-zero exit on failures")
    for p in (p_serve, p_routes, p_check):
        p.add_argument("--scripts", default=None, help="scripts folder (default $SCRIPTS_DIR)")
    p_serve.set_defaults(func=serve)
    p_routes.set_defaults(func=routes)
    p_check.set_defaults(func=check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())

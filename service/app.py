"""The application factory: wires settings, loader, metrics, tracing and logs together.

It owns no logic: every request goes to `pipeline.handle_request`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from flask import Flask, Request
from werkzeug.routing import MapAdapter

from service.access.callers import Callers
from service.access.clients import RealClient
from service.config import Settings, script_environment
from service.http.bulkhead import Bulkhead
from service.http.errors import ScriptFailed, render_error
from service.http.pipeline import handle_request
from service.jobs.queue import JobQueue
from service.observability.catalog import RevisionCollector
from service.observability.logs import build_logger
from service.observability.metrics import Metrics
from service.observability.tracing import build_tracer_provider, instrument, span_ids
from service.runners.limits import RunnerUser
from service.runners.pool import RunnerPool
from service.runners.spawner import RunnerConfig
from service.runtime import Runtime
from service.schedules.metrics import ScheduleCollector
from service.scripts.loader import ScriptCache
from service.scripts.resolve import zone_and_script
from service.scripts.secrets import Secrets
from service.scripts.shared import SharedDescriptions


def create_app(
    settings: Settings | None = None,
    *,
    run_dir: Path | None = None,
    started_at: float | None = None,
    platform_only: bool = False,
    **overrides: Any,
) -> Flask:
    """Build an isolated app. Without settings, reads the environment (Settings.from_env).

    `run_dir` is the folder a server's workers share (concurrency slots); `scriptgate
    serve` passes one, and an app built alone gets a private one removed with it.
    `platform_only` serves /_platform/* alone (the platform plane, plane.py).
    `overrides` replace single settings fields, which keeps tests short:
    `create_app(settings, api_keys=("k",))`.
    """
    settings = settings or Settings.from_env()
    if overrides:
        settings = replace(settings, **overrides)
    app = _ScriptgateFlask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="scriptgate-run-"))
        weakref.finalize(app, shutil.rmtree, run_dir, ignore_errors=True)

    provider = build_tracer_provider(settings.version)
    tracer = instrument(app, provider)  # first: its before_request opens the server span
    # Outermost, so the span, the log, the allowlists and the script all see the client.
    app.wsgi_app = RealClient(app.wsgi_app, settings.trusted_proxies)  # type: ignore[method-assign]
    secrets = Secrets(settings.secrets_dir)
    log = build_logger(settings.log_level, settings.log_file, settings.log_stdout, secrets.scrub)
    metrics = None
    if settings.metrics_enabled:
        metrics = Metrics(
            settings.version,
            settings.max_script_timeout,
            settings.multiproc_dir,
            exemplars=settings.metrics_exemplars,
        )
        metrics.register_live(RevisionCollector(settings.scripts_dir))
    runners = RunnerPool(runner_config(settings))
    weakref.finalize(app, runners.close)  # its zygote, and every runner with it
    app.extensions["scriptgate"] = Runtime(
        settings=settings,
        scripts=ScriptCache(
            settings.scripts_dir,
            settings.script_timeout,
            settings.max_script_timeout,
            settings.script_concurrency,
            log,
            on_backoff=None if metrics is None else _count_backoff(metrics, settings.scripts_dir),
            shared=SharedDescriptions(run_dir / "descriptions"),
        ),
        metrics=metrics,
        tracer_provider=provider,
        tracer=tracer,
        log=log,
        runners=runners,
        bulkhead=Bulkhead(run_dir / "slots"),
        jobs=JobQueue(settings, metrics),  # opens its store on first use, per process
        callers=Callers(settings, run_dir, log),
        secrets=secrets,
        started_at=started_at or time.time(),
        platform_only=platform_only,
    )
    if metrics is not None:  # next run, last success, failures: read from the store
        metrics.register_live(ScheduleCollector(app.extensions["scriptgate"].jobs))
    app.register_error_handler(Exception, _outside_pipeline)
    return app


def _count_backoff(metrics: Metrics, scripts_dir: Path) -> Callable[[str], None]:
    def count(path: str) -> None:
        zone, script = zone_and_script(scripts_dir, path)
        metrics.backoffs.labels(zone, script).inc()

    return count


def runner_config(settings: Settings) -> RunnerConfig:
    """What runners start with: nothing secret (the zygote gets it as it is)."""
    user = RunnerUser.lookup(settings.runner_user) if settings.runner_user else None
    return RunnerConfig(
        scripts_dir=str(settings.scripts_dir),
        log_level=settings.log_level,
        max_body=settings.max_body_bytes,
        memory=settings.script_memory_limit,
        user=user if os.geteuid() == 0 else None,
        environ=script_environment(os.environ),
    )


class _ScriptgateFlask(Flask):
    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        """No adapter for a request: there are no URL rules to match it against (see
        dispatch_request), and werkzeug would raise and catch a NotFound for every
        request, a tenth of a hello call's instructions. `url_for` has no rule to build
        in a request either way."""
        if request is not None:
            return None
        return super().create_url_adapter(request)

    def dispatch_request(self) -> Any:  # type: ignore[override]
        """Every request goes to the pipeline, which decides what exists and which
        methods it takes: no URL rules, so no path the router cannot match (a newline
        in it) and no made-up method escapes the JSON error and the log line."""
        return handle_request()


def _outside_pipeline(exc: Exception) -> Any:
    """Only for a failure before the pipeline runs (a broken instrumentation hook)."""
    from flask import current_app
    from opentelemetry import trace

    current_app.extensions["scriptgate"].log.error("error outside the pipeline", exc_info=exc)
    return render_error(ScriptFailed(), span_ids(trace.get_current_span())[0])

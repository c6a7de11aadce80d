"""The application factory: wires settings, loader, metrics, tracing and logs together."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from flask import Flask

from service import observe
from service.config import Settings
from service.dispatch import serve_script
from service.errors import register_error_handlers
from service.loader import ScriptCache
from service.logs import build_logger
from service.metrics import Metrics
from service.platform import bp as platform_bp
from service.runtime import Runtime
from service.tracing import build_tracer_provider, instrument

STARTED_AT_ENV = "SCRIPTGATE_STARTED_AT"
SCRIPT_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build an isolated app. Without settings, reads the environment (Settings.from_env).

    `overrides` replace single settings fields, which keeps tests short:
    `create_app(settings, api_keys=("k",))`.
    """
    settings = settings or Settings.from_env()
    if overrides:
        settings = replace(settings, **overrides)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # '//' and case tricks are refused by the resolver, not redirected by the router.
    app.url_map.merge_slashes = False
    app.json.sort_keys = False  # type: ignore[attr-defined]

    provider = build_tracer_provider(settings.version)
    tracer = instrument(app, provider)  # first: its before_request opens the server span
    metrics = None
    if settings.metrics_enabled:
        metrics = Metrics(settings.version, settings.max_script_timeout, settings.multiproc_dir)
    app.extensions["scriptgate"] = Runtime(
        settings=settings,
        scripts=ScriptCache(
            settings.scripts_dir, settings.script_timeout, settings.max_script_timeout
        ),
        metrics=metrics,
        tracer=tracer,
        log=build_logger(settings.log_level, settings.log_file, settings.log_stdout),
        started_at=float(os.environ.get(STARTED_AT_ENV) or time.time()),
    )
    app.extensions["scriptgate_tracer_provider"] = provider

    observe.install(app)
    register_error_handlers(app)
    app.register_blueprint(platform_bp)
    app.add_url_rule(
        "/", "script_root", serve_script, methods=SCRIPT_METHODS, provide_automatic_options=False
    )
    app.add_url_rule(
        "/<path:url_path>",
        "script",
        serve_script,
        methods=SCRIPT_METHODS,
        provide_automatic_options=False,
    )
    return app

"""The per-app objects every request needs, built once by create_app."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from flask import current_app
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from service.access.callers import Callers
from service.config import Settings
from service.http.bulkhead import Bulkhead
from service.jobs.queue import JobQueue
from service.observability.metrics import Metrics
from service.runners.pool import RunnerPool
from service.scripts.describe import Scanner
from service.scripts.loader import ScriptCache
from service.scripts.secrets import Secrets


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    scripts: ScriptCache
    metrics: Metrics | None
    tracer_provider: TracerProvider
    tracer: Tracer
    log: logging.Logger
    runners: RunnerPool
    bulkhead: Bulkhead
    jobs: JobQueue
    callers: Callers
    secrets: Secrets
    started_at: float
    platform_only: bool = False
    scanner: Scanner = field(default_factory=Scanner)

    def uptime(self) -> float:
        return round(time.time() - self.started_at, 3)


def runtime() -> Runtime:
    return current_app.extensions["scriptgate"]  # type: ignore[no-any-return]

"""The per-app objects every request needs, built once by create_app."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import current_app
from opentelemetry.trace import Tracer

from service.config import Settings
from service.loader import ScriptCache
from service.metrics import Metrics


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    scripts: ScriptCache
    metrics: Metrics | None
    tracer: Tracer
    log: logging.Logger
    started_at: float

    def uptime(self) -> float:
        return round(time.time() - self.started_at, 3)


def runtime() -> Runtime:
    return current_app.extensions["scriptgate"]

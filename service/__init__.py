"""Scriptgate: drop a Python file in a folder and it is an HTTP endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.version import __version__

if TYPE_CHECKING:
    from flask import Flask

    from service.config import Settings


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build an app (see service.app.create_app); imported lazily to keep import cheap."""
    from service.app import create_app as _create_app

    return _create_app(settings, **overrides)


__all__ = ["__version__", "create_app"]

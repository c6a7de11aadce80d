"""gunicorn's entry point: `service.wsgi:create_app()` builds the app inside each worker."""

from service.app import create_app

__all__ = ["create_app"]

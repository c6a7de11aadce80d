"""GET /_platform/docs: an interactive page over /_platform/openapi.json (Swagger UI).

Swagger UI's files come from the swagger-ui-py package (Swagger UI 5, which reads
OpenAPI 3.1; swagger-ui-bundle still ships 4.x, which refuses 3.1) and are served by
the platform itself: the page loads nothing from elsewhere, so it works on a closed
network, and its Content-Security-Policy allows this origin only. The page and its
initializer are static/docs.html and static/scriptgate-docs.js.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Request, Response, send_file

from service.http.errors import NotFound

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

STATIC = Path(__file__).resolve().parent / "static"
PAGE = "docs.html"
# The files the page loads, by URL name: the initializer is ours, the rest Swagger UI's.
OWN_ASSETS = ("scriptgate-docs.js",)
SWAGGER_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
ASSETS = (*OWN_ASSETS, *SWAGGER_ASSETS)
ASSET_MAX_AGE = 3600
# Swagger UI sets inline styles and shows data: images; nothing else leaves 'self'.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)


@functools.cache
def swagger_ui_dir() -> Path:
    """Swagger UI's files inside the installed swagger-ui-py, found without importing it
    (its package imports a web framework adapter and YAML for features not used here)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def docs_page(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    response = send_file(STATIC / PAGE, mimetype="text/html", max_age=0, conditional=True)
    return _harden(response)


def docs_asset(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    name = req.path.rpartition("/")[2]
    if name not in ASSETS:  # only reached through a VIEWS row, kept as a second lock
        raise NotFound()
    folder = STATIC if name in OWN_ASSETS else swagger_ui_dir()
    response = send_file(folder / name, max_age=ASSET_MAX_AGE, conditional=True)
    return _harden(response)


def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response

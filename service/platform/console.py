"""GET /_platform/console: the page people who are not programmers use to run scripts and
follow their runs, and the one JSON listing it needs that the platform did not have.

The page (static/console.html, console.js, console.css) is plain JavaScript: forms from a
JSON Schema, a table, a tree and a reader of Server-Sent Events come to a few hundred
lines, less than any framework's own size, and nothing has to be built or fetched. It
loads nothing from elsewhere and runs under a CSP that allows this origin only, with no
inline script or style; it puts every text that came from a script (docstrings,
parameter descriptions, output) in the page as text, never as HTML.

Which scripts a key opens is the access decision's (`access.guard.may_call_as`, over
`policy.allowed`), asked here per script for the caller the pipeline identified, never
guessed in the browser; every call the page makes then goes through the pipeline like
any other, so the listing is a convenience and never a permission.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Request, Response, jsonify, redirect

from service.access.guard import may_call_as, may_read_view_as
from service.access.policy import SEE_ALL_RUNS, STEER_SCHEDULES, allowed
from service.http.errors import NotFound
from service.platform.docs import STATIC
from service.scripts.describe import ScriptState, all_states, script_state
from service.scripts.problems import NoScript
from service.scripts.resolve import PLATFORM_PREFIX, parse_target

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

CONSOLE_PATH = f"{PLATFORM_PREFIX}/console"
PAGE = "console.html"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
ASSET_MAX_AGE = 300  # short: a new release's page must not run last release's script
# The page's budget: console.js + console.css, gzipped, as the browser transfers them.
# tests/unit/test_console.py holds the files to it.
BUDGET_GZIP_BYTES = 16 * 1024
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# A listed script is one that loads, or one not yet described (it may turn out not to).
LISTED_STATES = frozenset({"ok", "unknown"})
# Platform views the page offers to a key that may open them (asked of `access`).
ADMIN_VIEWS = ("keys", "routes")


def console_page(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    plain, _, etag = asset_bytes(PAGE)
    response = Response(plain, mimetype="text/html")
    response.set_etag(etag)
    response.cache_control.no_cache = True  # the page names its assets: always revalidated
    return harden(response.make_conditional(req))


def console_asset(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """console.js or console.css, gzipped for a browser that takes it (every one does):
    the budget is what crosses the network, and no proxy in front is assumed to compress."""
    name = req.path.rpartition("/")[2]
    if name not in ASSETS:  # only reached through a VIEWS row, kept as a second lock
        raise NotFound()
    plain, packed, etag = asset_bytes(name)
    gzipped = "gzip" in req.headers.get("Accept-Encoding", "").lower()
    response = Response(packed if gzipped else plain, mimetype=ASSETS[name])
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    response.set_etag(etag + ("-gz" if gzipped else ""))
    response.cache_control.max_age = ASSET_MAX_AGE
    response.cache_control.public = True
    return harden(response.make_conditional(req))


@functools.cache
def asset_bytes(name: str) -> tuple[bytes, bytes, str]:
    """(the file, gzipped, an ETag of its content): read once per process; a release
    restarts the workers."""
    plain = (STATIC / name).read_bytes()
    packed = gzip.compress(plain, compresslevel=9, mtime=0)
    return plain, packed, hashlib.sha256(plain).hexdigest()[:16]


def platform_root(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """GET /_platform/: people who type the platform's address land on the console."""
    return redirect(CONSOLE_PATH, 302)


def console_scripts(
    rt: Runtime, ctx: RequestContext, req: Request, *, view_at: Callable[[str], Any]
) -> Response:
    """GET /_platform/console/scripts: the scripts the caller's key may call, with what
    the page needs to build their forms, and which other views the key opens.

    Guarded CALLER_IF_ANY: without a key, the root zone's scripts; a key comes in
    X-API-Key or X-Admin-Key, as on the job endpoints, and one that matches none is 401
    (not "no key"), so the page can say so at sign-in; the pipeline identified and
    admitted it (expiry, rate limit, last use). Each zone is then asked whether this
    caller, its key sent in that zone's own header, may call each script. `view_at`
    finds a platform view by path: platform.views hands in its own table
    (functools.partial), so the guards of the views the page offers are read there.
    """

    def visible(zone: str, path: str) -> bool:
        return may_call_as(ctx.caller, zone, path, ctx.client_ip, rt.settings)

    if "url" in req.args:
        return _one_script(rt, req.args["url"], visible)
    # Sign-in never waits for an import: what this worker knows is listed with its form,
    # the rest by name (`pending`, described when opened) while the scanner learns them.
    rt.scanner.poke(rt)
    states = all_states(rt, visible, known_only=True)
    scripts = [describe(state) for state in states if state.state in LISTED_STATES]
    views = {name: view_at(f"{PLATFORM_PREFIX}/{name}") for name in ADMIN_VIEWS}
    may = {
        name: may_read_view_as(ctx.caller, view.name, view.guard, ctx.client_ip, rt.settings)
        for name, view in views.items()
    }
    may["all_runs"] = allowed(ctx.caller, SEE_ALL_RUNS)
    may["schedules"] = allowed(ctx.caller, STEER_SCHEDULES)
    key = ctx.caller.key
    response = jsonify(
        caller={"id": ctx.caller.id, "owner": key.owner if key else None},
        may=may,
        scripts=scripts,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _one_script(rt: Runtime, url: str, visible: Callable[[str, str], bool]) -> Response:
    """?url=/api/report.py: that script described (by a runner if need be), if the key
    may call it and it loads; else 404 alike, so nothing is learnt about the rest."""
    try:
        target = parse_target(url)
    except NoScript:
        raise NotFound() from None
    if not visible(target.zone, target.rel_path):
        raise NotFound()
    state = script_state(rt, target.zone, target.rel_path)
    if state is None or state.script is None:
        raise NotFound()
    response = jsonify(scripts=[describe(state, form=True)])
    response.headers["Cache-Control"] = "no-store"
    return response


def describe(state: ScriptState, *, form: bool = False) -> dict[str, Any]:
    """One script as the page lists it: where it is and its summary (only where it is,
    `pending`, while no runner has described it to this worker yet); with `form`, what
    the page builds its form from too. The listing leaves forms out: with 500 scripts
    their JSON Schemas were 370 KB of a 420 KB answer, for the one script opened."""
    folder, _, name = state.path.rpartition("/")
    entry: dict[str, Any] = {"zone": state.zone, "folder": folder, "name": name, "url": state.url}
    script = state.script
    if script is None:
        return {**entry, "pending": True}
    entry["summary"] = script.summary
    entry["async"] = script.run_async
    if form:
        entry.update(
            description=script.description,
            methods=sorted(script.methods - {"HEAD"}),
            params=script.params.to_json() if script.params else None,
        )
    return entry


def harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response

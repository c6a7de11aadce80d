"""Who may do what: `allowed()`, the one answer, and the guard each platform view declares.

Every path asks `allowed`, never a key's scopes or a header directly: a call of a script
(pipeline, the API document's per-caller filter), a platform view, a job (its record,
result, logs, events), every job, a schedule. Who the caller *is* was settled earlier, once
per request (guard.authorize, from the zone's header); this module only decides what that
caller may do, modelled on Datasette's `allowed(actor, action, resource)`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from service.access.clients import ip_allowed
from service.access.keys import Caller
from service.config import Settings
from service.scripts.resolve import KEYED_ZONES

# Actions. A thing's fields name what is acted on; `allowed` documents each.
CALL = "call"  # a script: Script(zone, path, method)
READ_VIEW = "view"  # a platform view: View(name, method)
SEE_RUN = "see_run"  # one job: anything with zone, script, method and caller (a store Job)
SEE_ALL_RUNS = "see_all_runs"  # every caller's jobs; no thing
STEER_SCHEDULES = "steer_schedules"  # pause and resume schedules; no thing
ACTIONS = frozenset({CALL, READ_VIEW, SEE_RUN, SEE_ALL_RUNS, STEER_SCHEDULES})

# Scope of a platform key that sees every caller's jobs, and one that steers schedules.
ALL_RUNS_SCOPE = ("platform", "jobs", "GET")
SCHEDULES_SCOPE = ("platform", "schedules", "POST")


@dataclass(frozen=True)
class Script:
    zone: str
    path: str  # zone-relative: "reports/daily.py"
    method: str


@dataclass(frozen=True)
class View:
    name: str  # "routes", "jobs/result"
    method: str


class Run(Protocol):
    """What `allowed` needs of a job (jobs.store.Job has these)."""

    zone: str
    script: str
    method: str
    caller: str


class Guard(enum.Enum):
    """How a platform view finds its caller, declared beside the view (platform.views):
    there is no default, so a new view is guarded only as its author says, and a test
    walks every view for one.

    OPEN      anyone API_TRUSTED_IPS lets in: health, for probes; the API document and
              its page, which show each caller only what it may call.
    TRUSTED   PLATFORM_TRUSTED_IPS, or else a key with the view's platform scope
              (X-Admin-Key); without PLATFORM_TRUSTED_IPS, open.
    KEY       a key with the view's platform scope, always (the keys list).
    CALLER    the key of any zone, if one is sent; a key that matches none is no key, so
              a wrong key gets the same 404 as another caller's job (ids cannot be probed).
              What it sees is per thing (SEE_RUN).
    CALLER_KEY  as CALLER, but a key is required and a wrong one is 401: a listing of
              "mine" needs a "me".
    CALLER_IF_ANY  open without a key; a key sent must be one (401 otherwise): the
              console's listing, which shows each caller what it may call.
    """

    OPEN = "open"
    TRUSTED = "trusted"
    KEY = "key"
    CALLER = "caller"
    CALLER_KEY = "caller_key"
    CALLER_IF_ANY = "caller_if_any"

    @property
    def scoped(self) -> bool:
        """A key passing this guard needs the view's platform scope."""
        return self in (Guard.TRUSTED, Guard.KEY)


def allowed(
    caller: Caller,
    action: str,
    thing: Script | View | Run | None = None,
    *,
    settings: Settings | None = None,
    client: str = "",
) -> bool:
    """May `caller` do `action` on `thing`?

    CALL        without a key (a zone that needs none), yes; with one, if it is not
                expired and its scopes cover the zone-relative path and method.
    READ_VIEW   a key's platform scopes cover the view (a guard said a key is needed).
    SEE_RUN     the key that started it, while it still may call that script (a narrowed
                key no longer sees its jobs); a job started without a key, while its zone
                still needs none (ids are 192 random bits); or a key that sees every job.
                /admin jobs also need ADMIN_TRUSTED_IPS, as /admin does (`settings` and
                `client` are required).
    SEE_ALL_RUNS  a key with the `platform:jobs` scope (ADMIN_API_KEY has `platform:*`).
    STEER_SCHEDULES  a key with the `platform:schedules` scope.
    """
    key = caller.key
    if action == CALL:
        assert isinstance(thing, Script)
        return key is None or (
            not key.expired() and key.allows(thing.zone, thing.path, thing.method)
        )
    if action == READ_VIEW:
        assert isinstance(thing, View)
        return key is not None and key.allows("platform", thing.name, thing.method)
    if action == SEE_ALL_RUNS:
        return key is not None and key.allows(*ALL_RUNS_SCOPE)
    if action == STEER_SCHEDULES:
        return key is not None and key.allows(*SCHEDULES_SCOPE)
    if action == SEE_RUN:
        assert settings is not None and thing is not None
        return _may_see_run(caller, thing, settings, client)  # type: ignore[arg-type]
    raise ValueError(f"unknown action {action!r}")


def zone_keys(zone: str, settings: Settings) -> tuple[tuple[bytes, ...], bool]:
    """The environment's keys of a keyed zone ("api" or "admin"), and whether a key is
    required there."""
    if zone == "api":
        return settings.api_keys, settings.api_auth
    return settings.admin_keys, settings.admin_auth


def _may_see_run(caller: Caller, run: Run, settings: Settings, client: str) -> bool:
    if run.zone == "admin" and not ip_allowed(client, settings.admin_trusted_ips):
        return False
    if allowed(caller, SEE_ALL_RUNS):
        return True
    if run.caller != caller.id:
        return False
    if caller.key is None:
        return run.zone not in KEYED_ZONES or not zone_keys(run.zone, settings)[1]
    return allowed(caller, CALL, Script(run.zone, run.script, run.method))

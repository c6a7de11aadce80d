"""Who is calling: the contract's checks in order (allowlists, then the zone's key, or
the guard a platform view declares), once per request.

`clients.RealClient` settled the client's address before; what the caller may then do is
`policy.allowed`'s to say.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from werkzeug.datastructures import EnvironHeaders

from service.access.clients import ip_allowed
from service.access.keys import ANONYMOUS, Caller, Keyring
from service.access.policy import CALL, READ_VIEW, Guard, Script, View, allowed, zone_keys
from service.config import Settings
from service.http.errors import AccessDenied
from service.scripts.resolve import PLATFORM_ZONE


def _header_bytes(value: str) -> bytes:
    """The bytes the client sent: WSGI hands header values over decoded as latin-1."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # already real text (a test client, a non-WSGI caller)
        return value.encode("utf-8", "surrogateescape")


# zone -> (key header, denial reason)
ZONE_KEY_HEADERS = {"api": ("X-API-Key", "api_key"), "admin": ("X-Admin-Key", "admin_key")}
PLATFORM_KEY_HEADER = "X-Admin-Key"
# Where a CALLER-guarded view finds the caller's key, in order, and the zones the key may
# come from: the key that started a job (X-API-Key or X-Admin-Key), or a platform key.
CALLER_KEY_HEADERS = (
    ("X-Admin-Key", ("platform", "admin"), "admin_key"),
    ("X-API-Key", ("api",), "api_key"),
)


def authorize(
    zone: str,
    client: str,
    headers: Any,
    settings: Settings,
    keyring: Keyring,
    guard: Guard = Guard.OPEN,
) -> Caller:
    """The contract's checks, in its order; returns who is calling, or raises AccessDenied.

    1. `API_TRUSTED_IPS`, for every path, platform endpoints included;
    2. the zone's own allowlist (`ADMIN_TRUSTED_IPS` for /admin);
    3. the zone's key: one of the zone's keys (API_KEY, ADMIN_API_KEY, or a named key
       with a scope in the zone). A zone no key may call is closed unless its
       `*_AUTH=off` opens it on purpose. A key with no scope in the zone is refused
       like a wrong one (401), so it learns nothing about the zone. On /_platform, the
       `guard` its view declares (policy.Guard) says how the caller is found.
    Scopes and script lookup come after, so without the right key an unknown script
    looks exactly like a known one.
    """
    if not ip_allowed(client, settings.api_trusted_ips):
        raise AccessDenied("ip")
    if zone == "admin" and not ip_allowed(client, settings.admin_trusted_ips):
        raise AccessDenied("ip")
    if zone == PLATFORM_ZONE:
        return authorize_platform(guard, client, headers, settings, keyring)
    if zone not in ZONE_KEY_HEADERS:
        return ANONYMOUS
    header, reason = ZONE_KEY_HEADERS[zone]
    if not zone_keys(zone, settings)[1]:
        return ANONYMOUS
    return caller_by_key(zone, header_values(headers, header), keyring, reason, header)


def header_values(headers: Any, name: str) -> list[str]:
    """Every value of a request header.

    A WSGI environ holds one value per header, so for a live request it is one lookup;
    werkzeug's `getlist` would walk every header of the environ for it.
    """
    if isinstance(headers, EnvironHeaders):
        value = headers.environ.get("HTTP_" + name.upper().replace("-", "_"))
        return [] if value is None else [value]
    return list(headers.getlist(name))


def authorize_platform(
    guard: Guard, client: str, headers: Any, settings: Settings, keyring: Keyring
) -> Caller:
    """The caller of a platform view, as its guard says (policy.Guard). A TRUSTED view
    asked for from outside PLATFORM_TRUSTED_IPS without any key is 403 `ip`."""
    if guard in (Guard.CALLER, Guard.CALLER_KEY, Guard.CALLER_IF_ANY):
        return caller_of_any_zone(
            headers,
            keyring,
            strict=guard is not Guard.CALLER,
            required=guard is Guard.CALLER_KEY,
        )
    if guard is Guard.OPEN:
        return ANONYMOUS
    trusted = settings.platform_trusted_ips
    if guard is Guard.TRUSTED and (not trusted or ip_allowed(client, trusted)):
        return ANONYMOUS
    presented = header_values(headers, PLATFORM_KEY_HEADER)
    if not presented and guard is Guard.TRUSTED:
        raise AccessDenied("ip")
    return caller_by_key(PLATFORM_ZONE, presented, keyring, "admin_key", PLATFORM_KEY_HEADER)


def caller_of_any_zone(
    headers: Any, keyring: Keyring, *, strict: bool, required: bool = False
) -> Caller:
    """The key sent in whichever zone's header carries one (CALLER_KEY_HEADERS).

    `strict`: a key that matches none is 401; otherwise a wrong key is no key at all, so
    it gets the same 404 as another caller's job. `required`: no key is 401 too.
    """
    for header, zones, reason in CALLER_KEY_HEADERS:
        presented = header_values(headers, header)
        if not presented:
            continue
        found = None
        if len(presented) == 1:
            secret = _header_bytes(presented[0])
            found = next(filter(None, (keyring.identify(z, secret) for z in zones)), None)
        if found is not None:
            return Caller(found.id, found)
        if strict:
            raise AccessDenied(reason, header)
        return ANONYMOUS
    if required:  # a listing of "mine" needs a "me"
        header, _, reason = CALLER_KEY_HEADERS[-1]
        raise AccessDenied(reason, header)
    return ANONYMOUS


def caller_by_key(
    zone: str, presented: Sequence[str], keyring: Keyring, reason: str, header: str
) -> Caller:
    """Exactly one header value, matching one of the zone's keys (constant time).

    Two header values are refused: a proxy and a client disagreeing about the key is
    not a case to guess at. A refusal names `header`, where the key goes.
    """
    if not keyring.has_zone(zone):
        raise AccessDenied("zone_disabled")
    key = keyring.identify(zone, _header_bytes(presented[0])) if len(presented) == 1 else None
    if key is None:
        raise AccessDenied(reason, header)
    return Caller(key.id, key)


def check_call(caller: Caller, zone: str, path: str, method: str) -> None:
    """403 `scope` unless the caller may call the zone-relative path (policy.allowed).

    Runs on the URL's validated path before any file is looked at, so a scoped key
    gets the same 403 for a script outside its scopes whether it exists or not.
    """
    if not allowed(caller, CALL, Script(zone, path, method)):
        raise AccessDenied("scope")


def check_view(caller: Caller, name: str, guard: Guard, method: str) -> None:
    """Past a TRUSTED or KEY guard, a key needs the view's platform scope (403 `scope`)."""
    key_needs_scope = guard.scoped and caller.key is not None
    if key_needs_scope and not allowed(caller, READ_VIEW, View(name, method)):
        raise AccessDenied("scope")


def may_call_as(caller: Caller, zone: str, path: str, client: str, settings: Settings) -> bool:
    """Whether this caller, already identified (by any zone's header), could call the
    script at `path` of `zone`: the zone's allowlists, a key of that zone where one is
    needed, and `allowed`. What the console lists for a signed-in key."""
    if not ip_allowed(client, settings.api_trusted_ips):
        return False
    if zone == "admin" and not ip_allowed(client, settings.admin_trusted_ips):
        return False
    if zone not in ZONE_KEY_HEADERS or not zone_keys(zone, settings)[1]:
        caller = ANONYMOUS  # a zone that needs no key calls every caller anonymous
    elif caller.key is None or zone not in caller.key.zones:
        return False  # authorize would refuse this key in this zone's header
    return allowed(caller, CALL, Script(zone, path, "GET"))


def may_read_view_as(
    caller: Caller, name: str, guard: Guard, client: str, settings: Settings
) -> bool:
    """Whether this caller, already identified, could GET the platform view `name` with
    its key sent as X-Admin-Key: the guard (authorize_platform's rules), then its scope."""
    if not ip_allowed(client, settings.api_trusted_ips):
        return False
    if guard in (Guard.OPEN, Guard.CALLER, Guard.CALLER_IF_ANY):
        return True
    if guard is Guard.CALLER_KEY:
        return caller.key is not None
    trusted = settings.platform_trusted_ips
    if guard is Guard.TRUSTED and (not trusted or ip_allowed(client, trusted)):
        return True
    if caller.key is None or PLATFORM_ZONE not in caller.key.zones:
        return False
    return allowed(caller, READ_VIEW, View(name, "GET"))


def may_call(
    zone: str, path: str, client: str, headers: Any, settings: Settings, keyring: Keyring
) -> bool:
    """Whether this caller could call the script at `path` (zone-relative) of `zone`: what
    the API documentation and the docs page show them."""
    try:
        caller = authorize(zone, client, headers, settings, keyring)
    except AccessDenied:
        return False
    return allowed(caller, CALL, Script(zone, path, "GET"))


# zone -> (key variable, switch variable), for the warning about a closed zone
ZONE_VARIABLES = {"api": ("API_KEY", "API_AUTH"), "admin": ("ADMIN_API_KEY", "ADMIN_AUTH")}


def closed_zone_warnings(settings: Settings) -> list[str]:
    """One line for each zone that answers every call 403 zone_disabled: a key is
    required but none is set (fail closed, on purpose; this says so at startup). With a
    KEYS_FILE, its named keys may open the zone, so nothing is said."""
    if settings.keys_file is not None:
        return []
    lines = []
    for zone in ZONE_KEY_HEADERS:
        if zone_keys(zone, settings) == ((), True):
            key, switch = ZONE_VARIABLES[zone]
            lines.append(
                f"warning: /{zone}/* is closed (403 zone_disabled): {key} is not set. "
                f"Set it, or {switch}=off to open /{zone} without a key."
            )
    return lines

"""Who is calling, and may they: client IP behind trusted proxies, allowlists, keys.

Access is decided here and nowhere else: `RealClient` settles who the client is once,
for every layer below it, `authorize` applies the contract's checks in order and says
which key is calling, and `check_scope` keeps a key to its scopes.

Threat model: any client can send any `X-Forwarded-For` and `X-Forwarded-Proto`. They
are only believed when the TCP peer is a trusted proxy. `X-Forwarded-For` then only up to
the right-most address that is not a trusted proxy itself: everything left of that was
written by the client and may be forged. An address that does not parse is taken as the
client, so it matches no allowlist and the request is refused (fail closed).
`X-Forwarded-Proto` only as the nearest proxy wrote it (its right-most value), and only
`http` or `https`: a script builds its links from that scheme, so a forged one could send
its callers somewhere else.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from werkzeug.datastructures import EnvironHeaders

from service.config import Network, Settings
from service.errors import AccessDenied
from service.keys import ANONYMOUS, Caller, Keyring
from service.resolve import PLATFORM_ZONE, zone_of

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_LOGGED_ADDRESS = 64


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress | None:
    """Parse one address as proxies write it: bare, `[v6]`, `[v6]:port` or `v4:port`."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # ::ffff:10.0.0.1 is how a dual-stack socket reports an IPv4 peer.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress | None, networks: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_ip(peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """The address to log and to check against allowlists.

    `forwarded_for` holds every `X-Forwarded-For` header value in order; several headers
    count as one comma-joined list, as RFC 7230 says.
    """
    peer = peer or ""
    if not proxies or not in_networks(parse_address(peer), proxies):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        if not in_networks(parse_address(hop), proxies):
            return hop[:MAX_LOGGED_ADDRESS]
    return peer  # only proxies all the way: the nearest one is the client


def ip_allowed(address: str, allowlist: Sequence[Network]) -> bool:
    """An empty allowlist admits everyone; otherwise the address must parse and match."""
    return not allowlist or in_networks(parse_address(address), allowlist)


def _header_bytes(value: str) -> bytes:
    """The bytes the client sent: WSGI hands header values over decoded as latin-1."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # already real text (a test client, a non-WSGI caller)
        return value.encode("utf-8", "surrogateescape")


# zone -> (key header, denial reason)
ZONE_KEY_HEADERS = {"api": ("X-API-Key", "api_key"), "admin": ("X-Admin-Key", "admin_key")}
PLATFORM_KEY_HEADER = "X-Admin-Key"
# Platform endpoints that PLATFORM_TRUSTED_IPS, or else a key with a platform scope,
# guards; /_platform/keys always needs the key. Health stays open for probes.
GUARDED_VIEWS = frozenset({"routes", "metrics", "keys", "schedules"})
# /_platform/schedules/<zone>/<path>/pause and /resume: a key, always (its
# `platform:schedules` scope is checked as any platform view's).
SCHEDULE_STEER_VIEWS = "schedules/"
KEY_ONLY_VIEWS = frozenset({"keys"})
JOB_VIEWS = "jobs"  # /_platform/jobs and below: who sees which job is per job (jobs/http.py)
# Where a job endpoint finds the caller's key, in order, and the zones the key may come
# from: the key that started a job (X-API-Key or X-Admin-Key), or a platform key.
JOB_KEY_HEADERS = (
    ("X-Admin-Key", ("platform", "admin"), "admin_key"),
    ("X-API-Key", ("api",), "api_key"),
)


def authorize(
    zone: str, path: str, client: str, headers: Any, settings: Settings, keyring: Keyring
) -> Caller:
    """The contract's checks, in its order; returns who is calling, or raises AccessDenied.

    1. `API_TRUSTED_IPS`, for every path, platform endpoints included;
    2. the zone's own allowlist (`ADMIN_TRUSTED_IPS` for /admin);
    3. the zone's key: one of the zone's keys (API_KEY, ADMIN_API_KEY, or a named key
       with a scope in the zone). A zone no key may call is closed unless its
       `*_AUTH=off` opens it on purpose. A key with no scope in the zone is refused
       like a wrong one (401), so it learns nothing about the zone.
    Scopes and script lookup come after, so without the right key an unknown script
    looks exactly like a known one.
    """
    if not ip_allowed(client, settings.api_trusted_ips):
        raise AccessDenied("ip")
    if zone == "admin" and not ip_allowed(client, settings.admin_trusted_ips):
        raise AccessDenied("ip")
    if zone == PLATFORM_ZONE:
        return authorize_platform(zone_of(path)[1], client, headers, settings, keyring)
    if zone not in ZONE_KEY_HEADERS:
        return ANONYMOUS
    header, reason = ZONE_KEY_HEADERS[zone]
    if not (settings.api_auth if zone == "api" else settings.admin_auth):
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
    view: str, client: str, headers: Any, settings: Settings, keyring: Keyring
) -> Caller:
    """Routes and metrics: open, unless PLATFORM_TRUSTED_IPS is set and the client is
    not in it; then a key with a platform scope (`X-Admin-Key`) lets it in. Keys: that
    key, always. A guarded view asked for without any key is 403 `ip`."""
    if view == JOB_VIEWS or view.startswith(JOB_VIEWS + "/"):
        return job_viewer(headers, keyring, strict=view == JOB_VIEWS)
    if view.startswith(SCHEDULE_STEER_VIEWS):
        presented = header_values(headers, PLATFORM_KEY_HEADER)
        return caller_by_key(PLATFORM_ZONE, presented, keyring, "admin_key", PLATFORM_KEY_HEADER)
    if view not in GUARDED_VIEWS:
        return ANONYMOUS
    trusted = settings.platform_trusted_ips
    if view not in KEY_ONLY_VIEWS and (not trusted or ip_allowed(client, trusted)):
        return ANONYMOUS
    presented = header_values(headers, PLATFORM_KEY_HEADER)
    if not presented and view not in KEY_ONLY_VIEWS:
        raise AccessDenied("ip")
    return caller_by_key(PLATFORM_ZONE, presented, keyring, "admin_key", PLATFORM_KEY_HEADER)


def job_viewer(headers: Any, keyring: Keyring, *, strict: bool) -> Caller:
    """The key a job endpoint is called with, from whichever zone's header carries it.

    Which jobs it then sees is `jobs.http.may_see`'s to say. A key that matches none
    is refused (401) by the listing (`strict`); on /_platform/jobs/<id> it is no key at
    all, so a wrong key gets the same 404 as another caller's job (ids cannot be probed).
    """
    for header, zones, reason in JOB_KEY_HEADERS:
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


def check_scope(caller: Caller, zone: str, path: str, method: str) -> None:
    """A key may call only the zone-relative paths (and methods) of its scopes.

    Runs on the URL's validated path before any file is looked at, so a scoped key
    gets the same 403 for a script outside its scopes whether it exists or not.
    """
    if caller.key is not None and not caller.key.allows(zone, path, method):
        raise AccessDenied("scope")


def may_call(
    zone: str, path: str, client: str, headers: Any, settings: Settings, keyring: Keyring
) -> bool:
    """Whether this caller could call the script at `path` (zone-relative) of `zone`: what
    the API documentation and the docs page show them. The one place that filter lives."""
    try:
        caller = authorize(zone, f"/{zone}/{path}", client, headers, settings, keyring)
        check_scope(caller, zone, path, "GET")
    except AccessDenied:
        return False
    return caller.key is None or not caller.key.expired()


def zone_keys(zone: str, settings: Settings) -> tuple[tuple[bytes, ...], bool]:
    """The environment's keys of a keyed zone ("api" or "admin"), and whether a key is
    required there."""
    if zone == "api":
        return settings.api_keys, settings.api_auth
    return settings.admin_keys, settings.admin_auth


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


ORIGINAL_ENVIRON_KEY = "werkzeug.proxy_fix.orig"
FORWARDED_SCHEMES = frozenset({"http", "https"})


def forwarded_scheme(value: str) -> str | None:
    """The scheme the nearest proxy wrote in `X-Forwarded-Proto`, if it is one we serve.

    Proxies that append (`https, http`) put theirs last, as with `X-Forwarded-For`;
    anything but http or https is ignored rather than handed to a script's URLs.
    """
    scheme = value.rpartition(",")[2].strip().lower()
    return scheme if scheme in FORWARDED_SCHEMES else None


class RealClient:
    """WSGI middleware: after the trusted-proxy rule, `REMOTE_ADDR` is the client and
    `wsgi.url_scheme` the scheme the client used.

    Like werkzeug's ProxyFix (`x_for=1, x_proto=1`), it rewrites the environ once, so the
    script's `request.remote_addr` and `request.scheme` / `url_root`, the span, the log
    and the allowlists all agree, and keeps the originals under
    `werkzeug.proxy_fix.orig`. ProxyFix itself trusts a fixed number of hops; the
    contract trusts a set of proxy networks (`TRUSTED_PROXIES`) and takes the right-most
    address not in it, which ProxyFix cannot express.
    `X-Forwarded-For` is cut to the hops that were believed and `X-Forwarded-Proto` is
    kept only when believed (neither from an untrusted peer), so `request.access_route`
    and a script reading the header never see a forged value.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], proxies: Sequence[Network]) -> None:
        self.app = app
        self.proxies = tuple(proxies)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        proto = environ.get("HTTP_X_FORWARDED_PROTO")
        if forwarded is None and proto is None and not self.proxies:
            return self.app(environ, start_response)  # nothing to believe or to keep
        peer = environ.get("REMOTE_ADDR", "")
        environ[ORIGINAL_ENVIRON_KEY] = {
            "REMOTE_ADDR": peer,
            "HTTP_X_FORWARDED_FOR": forwarded,
            "HTTP_X_FORWARDED_PROTO": proto,
            "wsgi.url_scheme": environ.get("wsgi.url_scheme"),
        }
        if forwarded is not None:
            client = client_ip(peer, (forwarded,) if forwarded else (), self.proxies)
            environ["REMOTE_ADDR"] = client
            if client == peer:
                environ.pop("HTTP_X_FORWARDED_FOR", None)
            else:
                environ["HTTP_X_FORWARDED_FOR"] = believed_hops(forwarded, client)
        if proto is not None:
            from_proxy = in_networks(parse_address(peer), self.proxies)
            scheme = forwarded_scheme(proto) if from_proxy else None
            if scheme is None:
                environ.pop("HTTP_X_FORWARDED_PROTO", None)
            else:
                environ["wsgi.url_scheme"] = scheme
                environ["HTTP_X_FORWARDED_PROTO"] = scheme
        return self.app(environ, start_response)


def believed_hops(forwarded: str, client: str) -> str:
    """`X-Forwarded-For` from the client's entry on: the part trusted proxies wrote."""
    hops = [hop.strip() for hop in forwarded.split(",")]
    for index in range(len(hops) - 1, -1, -1):
        if hops[index][:MAX_LOGGED_ADDRESS] == client:
            return ", ".join(hops[index:])
    return client

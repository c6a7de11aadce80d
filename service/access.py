"""Who is calling, and may they: client IP behind trusted proxies, allowlists, keys.

Access is decided here and nowhere else: `RealClient` settles who the client is once,
for every layer below it, and `authorize` applies the contract's checks in order.

Threat model: any client can send any `X-Forwarded-For`. It is only believed when the
TCP peer is a trusted proxy, and then only up to the right-most address that is not a
trusted proxy itself: everything left of that was written by the client and may be
forged. An address that does not parse is taken as the client, so it matches no
allowlist and the request is refused (fail closed).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from service.config import Network, Settings
from service.errors import AccessDenied

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


def key_matches(presented: Sequence[str], keys: Sequence[str]) -> bool:
    """Exactly one header value, equal to one of the configured keys.

    Every key is compared, in constant time, so timing tells neither the key nor which
    of several rotating keys came closest. Two header values are refused: a proxy and a
    client disagreeing about the key is not a case to guess at.
    """
    if len(presented) != 1 or not keys:
        return False
    candidate = _header_bytes(presented[0])
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.encode("utf-8", "surrogateescape"))
    return matched


def _header_bytes(value: str) -> bytes:
    """The bytes the client sent: WSGI hands header values over decoded as latin-1."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # already real text (a test client, a non-WSGI caller)
        return value.encode("utf-8", "surrogateescape")


# zone -> (key header, denial reason)
ZONE_KEY_HEADERS = {"api": ("X-API-Key", "api_key"), "admin": ("X-Admin-Key", "admin_key")}


def authorize(zone: str, client: str, headers: Any, settings: Settings) -> None:
    """The contract's checks, in its order; raises AccessDenied.

    1. `API_TRUSTED_IPS`, for every path, platform endpoints included;
    2. the zone's own allowlist (`ADMIN_TRUSTED_IPS` for /admin);
    3. the zone's key. A zone whose key is not configured is closed unless its
       `*_AUTH=off` opens it on purpose.
    Script lookup comes after, so without the right key an unknown script looks
    exactly like a known one.
    """
    if not ip_allowed(client, settings.api_trusted_ips):
        raise AccessDenied("ip")
    if zone == "admin" and not ip_allowed(client, settings.admin_trusted_ips):
        raise AccessDenied("ip")
    if zone not in ZONE_KEY_HEADERS:
        return
    header, reason = ZONE_KEY_HEADERS[zone]
    keys, required = zone_keys(zone, settings)
    if not required:
        return
    if not keys:
        raise AccessDenied("zone_disabled")
    if not key_matches(headers.getlist(header), keys):
        raise AccessDenied(reason, header)


def may_call(zone: str, client: str, headers: Any, settings: Settings) -> bool:
    """Whether this caller could call a script of `zone`: what the API documentation and
    the docs page show them. The one place that filter lives (named keys extend it)."""
    try:
        authorize(zone, client, headers, settings)
    except AccessDenied:
        return False
    return True


def zone_keys(zone: str, settings: Settings) -> tuple[tuple[str, ...], bool]:
    """The keys of a keyed zone ("api" or "admin"), and whether a key is required."""
    if zone == "api":
        return settings.api_keys, settings.api_auth
    return settings.admin_keys, settings.admin_auth


# zone -> (key variable, switch variable), for the warning about a closed zone
ZONE_VARIABLES = {"api": ("API_KEY", "API_AUTH"), "admin": ("ADMIN_API_KEY", "ADMIN_AUTH")}


def closed_zone_warnings(settings: Settings) -> list[str]:
    """One line for each zone that answers every call 403 zone_disabled: a key is
    required but none is set (fail closed, on purpose; this says so at startup)."""
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


class RealClient:
    """WSGI middleware: after the trusted-proxy rule, `REMOTE_ADDR` is the client.

    Like werkzeug's ProxyFix, it rewrites the environ once, so the script's
    `request.remote_addr`, the span, the log and the allowlists all agree, and keeps
    the originals under `werkzeug.proxy_fix.orig`. ProxyFix itself trusts a fixed number
    of hops; the contract trusts a set of proxy networks (`TRUSTED_PROXIES`) and takes
    the right-most address not in it, which ProxyFix cannot express.
    `X-Forwarded-For` is cut to the hops that were believed (none from an untrusted
    peer), so `request.access_route` never shows a forged address.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], proxies: Sequence[Network]) -> None:
        self.app = app
        self.proxies = tuple(proxies)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded is not None or self.proxies:
            peer = environ.get("REMOTE_ADDR", "")
            environ[ORIGINAL_ENVIRON_KEY] = {
                "REMOTE_ADDR": peer,
                "HTTP_X_FORWARDED_FOR": forwarded,
            }
            client = client_ip(peer, (forwarded,) if forwarded else (), self.proxies)
            environ["REMOTE_ADDR"] = client
            if client == peer:
                environ.pop("HTTP_X_FORWARDED_FOR", None)
            else:
                environ["HTTP_X_FORWARDED_FOR"] = believed_hops(forwarded or "", client)
        return self.app(environ, start_response)


def believed_hops(forwarded: str, client: str) -> str:
    """`X-Forwarded-For` from the client's entry on: the part trusted proxies wrote."""
    hops = [hop.strip() for hop in forwarded.split(",")]
    for index in range(len(hops) - 1, -1, -1):
        if hops[index][:MAX_LOGGED_ADDRESS] == client:
            return ", ".join(hops[index:])
    return client

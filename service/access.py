"""Who is calling, and may they: client IP behind trusted proxies, allowlists, keys.

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
from collections.abc import Sequence

from service.config import Network, Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_LOGGED_ADDRESS = 64


class AccessDenied(Exception):
    """Refused before any script is looked up; `reason` is the contract's reason code."""

    STATUS = {"ip": 403, "zone_disabled": 403, "api_key": 401, "admin_key": 401}

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = self.STATUS[reason]


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


def check_zone(zone: str, client: str, headers: object, settings: Settings) -> None:
    """Apply a zone's own allowlist and key; raises AccessDenied.

    The global `API_TRUSTED_IPS` check runs earlier, for every path. A zone whose key is
    not configured is closed unless its `*_AUTH=off` opens it on purpose.
    """
    if zone == "admin" and not ip_allowed(client, settings.admin_trusted_ips):
        raise AccessDenied("ip")
    if zone not in ZONE_KEY_HEADERS:
        return
    header, reason = ZONE_KEY_HEADERS[zone]
    if zone == "api":
        keys, required = settings.api_keys, settings.api_auth
    else:
        keys, required = settings.admin_keys, settings.admin_auth
    if not required:
        return
    if not keys:
        raise AccessDenied("zone_disabled")
    if not key_matches(headers.getlist(header), keys):  # type: ignore[attr-defined]
        raise AccessDenied(reason)

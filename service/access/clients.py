"""Who the client is: its address behind trusted proxies, its scheme, and allowlists.

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

from service.config import Network

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

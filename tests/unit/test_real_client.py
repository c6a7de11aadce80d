"""RealClient as a table, like werkzeug's ProxyFix tests: peer and headers in, what the
app below it sees out (client address, scheme, URL root, the headers left for scripts)."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from service.access.clients import ORIGINAL_ENVIRON_KEY, RealClient
from service.config import parse_networks

PROXIES = parse_networks("TRUSTED_PROXIES", "10.0.0.1, 10.0.0.2, fd00::/8")
PROXY = "10.0.0.1"
STRANGER = "203.0.113.9"


def seen(
    peer: str,
    headers: dict[str, str],
    proxies: tuple = PROXIES,
    base_url: str = "http://api.example",
    wrap: Any = None,
) -> Request:
    """The request as the app below the middleware sees it."""
    captured: dict[str, Request] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        captured["request"] = Request(environ)
        return Response("ok")(environ, start_response)

    middleware = wrap(app) if wrap else RealClient(app, proxies)
    environ = EnvironBuilder(
        path="/hello.py", base_url=base_url, headers=headers, environ_base={"REMOTE_ADDR": peer}
    ).get_environ()
    b"".join(middleware(environ, lambda *args: None))
    return captured["request"]


@pytest.mark.parametrize(
    ("peer", "proto", "scheme", "header"),
    [
        # From a trusted proxy: the scheme the client used to reach the proxy.
        (PROXY, "https", "https", "https"),
        (PROXY, "http", "http", "http"),
        (PROXY, "HTTPS ", "https", "https"),
        ("fd00::7", "https", "https", "https"),
        ("::ffff:10.0.0.1", "https", "https", "https"),
        # Appended by a chain: the nearest proxy's value is the right-most one.
        (PROXY, "http, https", "https", "https"),
        (PROXY, "https, http", "http", "http"),
        # Not a scheme we serve: ignored, and not left for a script to read either.
        (PROXY, "ftp", "http", None),
        (PROXY, "javascript", "http", None),
        (PROXY, "", "http", None),
        (PROXY, "https, ", "http", None),
        # From anyone else: never believed, whatever it says.
        (STRANGER, "https", "http", None),
        ("10.0.0.3", "https", "http", None),
        ("not-an-ip", "https", "http", None),
    ],
)
def test_forwarded_proto(peer: str, proto: str, scheme: str, header: str | None) -> None:
    request = seen(peer, {"X-Forwarded-Proto": proto})
    assert request.scheme == scheme
    assert request.url_root == f"{scheme}://api.example/"
    assert request.headers.get("X-Forwarded-Proto") == header
    assert request.environ[ORIGINAL_ENVIRON_KEY]["HTTP_X_FORWARDED_PROTO"] == proto
    assert request.environ[ORIGINAL_ENVIRON_KEY]["wsgi.url_scheme"] == "http"


def test_without_trusted_proxies_forwarded_proto_is_never_believed() -> None:
    request = seen("127.0.0.1", {"X-Forwarded-Proto": "https"}, proxies=())
    assert (request.scheme, request.headers.get("X-Forwarded-Proto")) == ("http", None)


def test_an_ignored_value_leaves_the_connections_own_scheme() -> None:
    """Served over TLS directly: a believed `http` says so, an ignored value changes nothing."""
    tls = "https://api.example"
    assert seen(PROXY, {"X-Forwarded-Proto": "http"}, base_url=tls).scheme == "http"
    assert seen(PROXY, {"X-Forwarded-Proto": "gopher"}, base_url=tls).scheme == "https"


@pytest.mark.parametrize(
    ("peer", "headers", "remote_addr", "scheme", "access_route"),
    [
        # Both headers from the proxy: the client and its scheme.
        (
            PROXY,
            {"X-Forwarded-For": "6.6.6.6, 198.51.100.7", "X-Forwarded-Proto": "https"},
            "198.51.100.7",
            "https",
            ["198.51.100.7"],
        ),
        # Both forged by a client reaching the platform directly.
        (
            STRANGER,
            {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"},
            STRANGER,
            "http",
            [STRANGER],
        ),
        # A proxy that sends only one of them.
        (PROXY, {"X-Forwarded-Proto": "https"}, PROXY, "https", [PROXY]),
        (PROXY, {"X-Forwarded-For": "198.51.100.7"}, "198.51.100.7", "http", ["198.51.100.7"]),
    ],
)
def test_forwarded_for_and_proto_together(
    peer: str, headers: dict[str, str], remote_addr: str, scheme: str, access_route: list[str]
) -> None:
    request = seen(peer, headers)
    assert (request.remote_addr, request.scheme) == (remote_addr, scheme)
    assert request.access_route == access_route
    assert request.environ[ORIGINAL_ENVIRON_KEY]["REMOTE_ADDR"] == peer


@pytest.mark.parametrize("proto", ["https", "http", "http, https", "https, http"])
def test_one_trusted_proxy_agrees_with_proxy_fix(proto: str) -> None:
    """Oracle: with one proxy, the scheme and URL root are what ProxyFix(x_proto=1) gives."""
    headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": proto}
    ours = seen(PROXY, headers)
    stock = seen(PROXY, headers, wrap=lambda app: ProxyFix(app, x_for=1, x_proto=1))
    assert (ours.scheme, ours.url_root, ours.remote_addr) == (
        stock.scheme,
        stock.url_root,
        stock.remote_addr,
    )

"""Hostile requests against real gunicorn: every one gets a clean 4xx, nothing leaks.

A table of a few hundred requests (traversal in every spelling, symlinks, private names,
case tricks, forged forwarding headers, bad keys, oversized and malformed bodies), each
with the one status it must get, sent byte for byte on a socket. For every case: the
expected status, never a 500, never a byte of a file that must not be served, and every
error from the platform is the contract's JSON body. At the end, no key in any log.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hardening.harness import (
    TRACE_ID,
    Reply,
    assert_clean_error,
    build_request,
    fetch,
    read_log,
    record_figure,
    send_raw,
    write_script,
)
from tests.servers import Gunicorn, gunicorn

# Written into every file that must never be served; if it shows up in a body, a
# request reached it.
MARKER = "HOSTILE-MARKER-5d1f0c"
PASSWD_MARKER = "root:x:0:0"

API_KEY = "hk-api-3f9c1e7a52"
API_KEY_ROTATED = "hk-api-rotated-b42d90"
ADMIN_KEY = "hk-admin-8e1d55c7"
WRONG_KEYS = ("hk-api-wrong-0000", API_KEY.upper(), API_KEY + "x", API_KEY[:-1])
ALL_KEYS = (API_KEY, API_KEY_ROTATED, ADMIN_KEY, *WRONG_KEYS)

K = ((b"X-API-Key", API_KEY.encode()),)
A = ((b"X-Admin-Key", ADMIN_KEY.encode()),)
MAX_BODY = 1024

SERVER_ENV = {
    # Keys, a small body limit, and an allowlist the test's own address is on.
    "main": {
        "API_KEY": f"{API_KEY},{API_KEY_ROTATED}",
        "ADMIN_API_KEY": ADMIN_KEY,
        "MAX_BODY_BYTES": str(MAX_BODY),
        "API_TRUSTED_IPS": "127.0.0.1,::1",
    },
    # No trusted proxy, only 10/8 allowed: 127.0.0.1 is refused on every path, whatever
    # X-Forwarded-For and friends claim.
    "noproxy": {
        "API_KEY": API_KEY,
        "ADMIN_API_KEY": ADMIN_KEY,
        "API_TRUSTED_IPS": "10.0.0.0/8",
    },
    # 127.0.0.1 is the proxy, the clients behind it are 10/8 and fd00::/8; /admin only
    # allows 10/8, with its key switched off to isolate the IP logic.
    "proxy": {
        "API_KEY": API_KEY,
        "ADMIN_AUTH": "off",
        "TRUSTED_PROXIES": "127.0.0.1",
        "API_TRUSTED_IPS": "10.0.0.0/8,fd00::/8",
        "ADMIN_TRUSTED_IPS": "10.0.0.0/8",
    },
}

SECRET_SCRIPT = f'def main(request):\n    return "{MARKER}"\n'
OK_SCRIPT = 'def main(request):\n    return {"ok": True}\n'


def echo_script(ran_file: Path, methods: str) -> str:
    """Returns the body untouched and leaves a trace on disk each time it runs."""
    return (
        f"METHODS = {methods}\n"
        "def main(request):\n"
        f"    with open({str(ran_file)!r}, 'a') as f:\n"
        "        f.write('x')\n"
        "    return request.get_data()\n"
    )


@dataclass(frozen=True)
class Tree:
    scripts: Path
    ran_file: Path

    def runs(self) -> int:
        """How many times an echo script has run so far."""
        return self.ran_file.stat().st_size if self.ran_file.exists() else 0


def build_tree(base: Path) -> Tree:
    """A scripts folder full of traps, next to an `outside/` folder that must stay unseen."""
    outside = base / "outside"
    scripts = base / "scripts"
    ran_file = base / "ran"
    write_script(outside / "evil.py", SECRET_SCRIPT)
    (outside / "secret.txt").write_text(MARKER)
    public = {
        "hello.py": OK_SCRIPT,
        "sub/deep.py": OK_SCRIPT,
        "getonly.py": 'METHODS = ["GET"]\n' + OK_SCRIPT,
        "api/hello.py": OK_SCRIPT,
        "admin/stats.py": OK_SCRIPT,
        "echo_root.py": echo_script(ran_file, '["POST"]'),
        "api/echo.py": echo_script(ran_file, '["POST"]'),
    }
    private = [
        "_private.py", ".hidden.py", "_dir/x.py", ".dir/x.py", "sub/_x.py", "sub/.x.py",
        "sub/_d/x.py", "_lib/formatting.py", "api/_private.py", "api/.hidden.py",
        "api/_dir/x.py", "api/sub/_x.py", "api/sub/.x.py", "admin/_x.py",
    ]  # fmt: skip
    not_scripts = [
        "secrets.txt", "hello.py.bak", "hello.pyc", "hello.py~", "config.json", ".env",
        ".py", "api/secrets.txt", "api/.env", "api/.py", "__pycache__/hello.cpython-311.pyc",
    ]  # fmt: skip
    for rel, source in public.items():
        write_script(scripts / rel, source)
    for rel in private + not_scripts:
        write_script(scripts / rel, SECRET_SCRIPT)
    links = {
        "escape.py": outside / "evil.py",
        "linkdir": outside,
        "api/escape.py": outside / "evil.py",
        "root_to_api.py": scripts / "api/hello.py",
        "root_to_admin.py": scripts / "admin/stats.py",
        "apilink": scripts / "api",
        "to_private.py": scripts / "_private.py",
        "api/to_root.py": scripts / "hello.py",
        "etc_passwd.py": Path("/etc/passwd"),
        "alias.py": scripts / "hello.py",  # inside its own zone: allowed
    }
    for rel, target in links.items():
        os.symlink(target, scripts / rel)
    return Tree(scripts, ran_file)


Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Case:
    id: str
    target: bytes
    expected: int
    server: str = "main"
    method: bytes = b"GET"
    headers: Headers = ()
    body: bytes | None = None
    raw: bytes | None = None  # the whole request, when even build_request is too polite
    echo: bytes | None = None  # the body that must come back, byte for byte
    runs: bool | None = None  # whether the echo script may run
    trace: str | None = None  # "fresh", or the trace id the response must continue


def case(id: str, target: str | bytes, expected: int, server: str = "main", **kw) -> Case:
    raw_target = target.encode() if isinstance(target, str) else target
    return Case(id, raw_target, expected, server, **kw)


# Every way of writing "../" that a server, proxy or filesystem has ever decoded.
DOTDOT = {
    "plain": "../",
    "enc-dots": "%2e%2e/",
    "enc-dots-upper": "%2E%2E/",
    "half-enc-a": ".%2e/",
    "half-enc-b": "%2e./",
    "enc-all": "%2e%2e%2f",
    "enc-slash": "..%2f",
    "enc-slash-upper": "..%2F",
    "double-enc-dots": "%252e%252e/",
    "double-enc-slash": "..%252f",
    "overlong-dots": "%c0%ae%c0%ae/",
    "overlong3-dots": "%e0%80%ae%e0%80%ae/",
    "overlong-slash": "..%c0%af",
    "backslash": "..\\",
    "enc-backslash": "..%5c",
    "enc-all-backslash": "%2e%2e%5c",
    "nul": "..%00/",
    "semicolon": "..;/",
    "three-dots": ".../",
    "fullwidth-dots": "%ef%bc%8e%ef%bc%8e/",
    "dot-then-dotdot": "./../",
    "double-slash": "..//",
}


def traversal_cases() -> Iterator[Case]:
    for name, up in DOTDOT.items():
        yield case(f"dotdot-{name}-root", "/" + up + "outside/evil.py", 404)
        yield case(f"dotdot-{name}-api", "/api/" + up * 2 + "outside/evil.py", 404, headers=K)
        yield case(f"dotdot-{name}-api-nokey", "/api/" + up * 2 + "outside/evil.py", 401)
        yield case(f"dotdot-{name}-admin", "/admin/" + up * 2 + "outside/evil.py", 404, headers=A)
        yield case(f"dotdot-{name}-api-to-root", "/api/" + up + "hello.py", 404, headers=K)


def path_cases() -> Iterator[Case]:
    table = [
        # legitimate controls
        ("control-root", "/hello.py", 200, ()),
        ("control-subfolder", "/sub/deep.py", 200, ()),
        ("control-symlink-inside-zone", "/alias.py", 200, ()),
        ("control-api", "/api/hello.py", 200, K),
        ("control-admin", "/admin/stats.py", 200, A),
        ("control-query-with-dotdot", "/hello.py?name=../../etc/passwd", 200, ()),
        ("control-absolute-form", "http://127.0.0.1/hello.py", 200, ()),
        ("control-platform-health", "/_platform/health", 200, ()),
        # a decoded %2f or %61 still lands in the api zone, key and all
        ("enc-zone-slash-nokey", "/api%2fhello.py", 401, ()),
        ("enc-zone-slash-key", "/api%2fhello.py", 200, K),
        ("enc-zone-letter-nokey", "/%61pi/hello.py", 401, ()),
        ("enc-zone-letter-key", "/%61pi/hello.py", 200, K),
        # crossing zones
        ("cross-root-to-api", "/x/../api/hello.py", 404, ()),
        ("cross-root-to-api-enc", "/x/%2e%2e/api/hello.py", 404, ()),
        ("cross-root-to-api-enc-slash", "/x/..%2fapi%2fhello.py", 404, ()),
        ("cross-dot-api", "/./api/hello.py", 404, ()),
        # gunicorn reads a leading "//" as "/": still the api zone, key and all
        ("cross-leading-double-slash-nokey", "//api/hello.py", 401, ()),
        ("cross-leading-double-slash-key", "//api/hello.py", 200, K),
        ("cross-api-empty-segment", "/api//hello.py", 404, K),
        ("cross-api-dot-segment", "/api/./hello.py", 404, K),
        ("cross-api-sub-dotdot", "/api/sub/../hello.py", 404, K),
        ("cross-platform-dotdot", "/_platform/../hello.py", 404, ()),
        ("cross-platform-enc-dotdot", "/_platform/%2e%2e/hello.py", 404, ()),
        ("cross-platform-outside", "/_platform/../../outside/evil.py", 404, ()),
        ("cross-platform-health-dotdot", "/_platform/health/../../hello.py", 404, ()),
        ("cross-absolute-form-dotdot", "http://127.0.0.1/../outside/evil.py", 404, ()),
        # NUL bytes
        ("nul-after-suffix", "/hello.py%00", 404, ()),
        ("nul-then-txt", "/hello.py%00.txt", 404, ()),
        ("nul-before-suffix", "/hello%00.py", 404, ()),
        ("nul-api", "/api/hello.py%00", 404, K),
        ("nul-segment", "/%00/hello.py", 404, ()),
        ("nul-in-folder", "/sub%00/deep.py", 404, ()),
        # symlinks
        ("symlink-out-of-root", "/escape.py", 404, ()),
        ("symlink-out-of-api", "/api/escape.py", 404, K),
        ("symlink-dir-out", "/linkdir/evil.py", 404, ()),
        ("symlink-dir-out-txt", "/linkdir/secret.txt", 404, ()),
        ("symlink-root-into-api", "/root_to_api.py", 404, ()),
        ("symlink-root-into-admin", "/root_to_admin.py", 404, ()),
        ("symlink-dir-root-into-api", "/apilink/hello.py", 404, ()),
        ("symlink-to-private", "/to_private.py", 404, ()),
        ("symlink-api-to-root", "/api/to_root.py", 404, K),
        ("symlink-to-etc-passwd", "/etc_passwd.py", 404, ()),
        # private names at every depth
        ("private-underscore", "/_private.py", 404, ()),
        ("private-dot", "/.hidden.py", 404, ()),
        ("private-dir-underscore", "/_dir/x.py", 404, ()),
        ("private-dir-dot", "/.dir/x.py", 404, ()),
        ("private-sub-underscore", "/sub/_x.py", 404, ()),
        ("private-sub-dot", "/sub/.x.py", 404, ()),
        ("private-sub-dir", "/sub/_d/x.py", 404, ()),
        ("private-lib", "/_lib/formatting.py", 404, ()),
        ("private-enc-underscore", "/%5fprivate.py", 404, ()),
        ("private-enc-dot", "/%2ehidden.py", 404, ()),
        ("private-pycache", "/__pycache__/hello.cpython-311.pyc", 404, ()),
        ("private-platform-lookalike", "/_platform_x.py", 404, ()),
        ("private-api-underscore", "/api/_private.py", 404, K),
        ("private-api-dot", "/api/.hidden.py", 404, K),
        ("private-api-dir", "/api/_dir/x.py", 404, K),
        ("private-api-sub-underscore", "/api/sub/_x.py", 404, K),
        ("private-api-sub-dot", "/api/sub/.x.py", 404, K),
        ("private-api-enc", "/api/%5fprivate.py", 404, K),
        ("private-api-nokey", "/api/_private.py", 401, ()),
        ("private-admin", "/admin/_x.py", 404, A),
        # case tricks (the zone is the literal first segment; the filesystem is exact)
        ("case-API", "/API/hello.py", 404, ()),
        ("case-API-key", "/API/hello.py", 404, K),
        ("case-Api-key", "/Api/hello.py", 404, K),
        ("case-aPI", "/aPI/hello.py", 404, ()),
        ("case-enc-API", "/%41PI/hello.py", 404, K),
        ("case-ADMIN-key", "/ADMIN/stats.py", 404, A),
        ("case-Admin-key", "/Admin/stats.py", 404, A),
        ("case-Admin", "/Admin/stats.py", 404, ()),
        ("case-HELLO", "/HELLO.py", 404, ()),
        ("case-Hello", "/Hello.py", 404, ()),
        ("case-suffix-PY", "/hello.PY", 404, ()),
        ("case-suffix-Py", "/hello.Py", 404, ()),
        ("case-api-HELLO", "/api/HELLO.py", 404, K),
        ("case-api-suffix", "/api/hello.PY", 404, K),
        ("case-PLATFORM", "/_PLATFORM/health", 404, ()),
        ("case-platform-HEALTH", "/_platform/HEALTH", 404, ()),
        ("case-Platform", "/_Platform/health", 404, ()),
        # trailing dots, slashes and friends
        ("trail-dot", "/hello.py.", 404, ()),
        ("trail-dotdot", "/hello.py..", 404, ()),
        ("trail-slash", "/hello.py/", 404, ()),
        ("trail-double-slash", "/hello.py//", 404, ()),
        ("trail-slash-dot", "/hello.py/.", 404, ()),
        ("trail-no-suffix-dot", "/hello.", 404, ()),
        ("trail-no-suffix", "/hello", 404, ()),
        ("trail-space", "/hello.py%20", 404, ()),
        ("trail-tab", "/hello.py%09", 404, ()),
        ("trail-semicolon", "/hello.py;", 404, ()),
        ("trail-ads", "/hello.py::$DATA", 404, ()),
        ("trail-enc-slash", "/hello.py%2f", 404, ()),
        ("trail-enc-dot", "/hello.py%2e", 404, ()),
        ("trail-folder-slash", "/sub/", 404, ()),
        ("trail-folder", "/sub", 404, ()),
        ("trail-root", "/", 404, ()),
        ("trail-api-slash", "/api/hello.py/", 404, K),
        ("trail-api-dot", "/api/hello.py.", 404, K),
        ("trail-api-folder", "/api/", 404, K),
        ("trail-api-bare", "/api", 404, K),
        ("trail-api-bare-nokey", "/api", 401, ()),
        ("trail-api-dotdot-after", "/api/hello.py/..", 404, K),
        ("trail-admin-folder", "/admin/", 404, A),
        # sizes
        ("long-path-8k", "/" + "a" * 8000 + ".py", 414, ()),
        ("long-path-5k", "/" + "a" * 5000 + ".py", 414, ()),
        ("long-path-4k-under-limit", "/" + "a" * 4000 + ".py", 404, ()),
        ("long-segment-256", "/" + "a" * 253 + ".py", 404, ()),
        ("long-500-segments", "/" + "a/" * 499 + "x.py", 404, ()),
        ("long-33-segments", "/" + "a/" * 32 + "x.py", 404, ()),
        ("long-32-segments-missing", "/" + "a/" * 31 + "x.py", 404, ()),
        ("long-query-8k", "/hello.py?q=" + "a" * 8000, 414, ()),
        # files in the scripts folder that are not scripts
        ("file-txt", "/secrets.txt", 404, ()),
        ("file-bak", "/hello.py.bak", 404, ()),
        ("file-pyc", "/hello.pyc", 404, ()),
        ("file-tilde", "/hello.py~", 404, ()),
        ("file-json", "/config.json", 404, ()),
        ("file-env", "/.env", 404, ()),
        ("file-bare-suffix", "/.py", 404, ()),
        ("file-api-txt", "/api/secrets.txt", 404, K),
        ("file-api-env", "/api/.env", 404, K),
        ("file-api-bare-suffix", "/api/.py", 404, K),
        # odd bytes, and a path that tries to forge a log line
        ("utf8-accent", "/h%C3%A9llo.py", 404, ()),
        ("utf8-rtl-override", "/hello%E2%80%AE.py", 404, ()),
        ("invalid-utf8", "/%ff%fe.py", 404, ()),
        ("log-injection-path", "/hello.py%0d%0a%7b%22level%22%3a%22ERROR%22%7d", 404, ()),
        ("log-injection-query", "/hello.py?name=%0a%7b%22level%22%3a%22ERROR%22%7d", 200, ()),
        # request lines gunicorn refuses before the platform sees them
        ("line-asterisk", "*", 400, ()),
        ("line-relative", "../outside/evil.py", 400, ()),
        ("line-no-slash", "hello.py", 400, ()),
    ]
    for id, target, expected, headers in table:
        yield case(id, target, expected, headers=headers)


def method_cases() -> Iterator[Case]:
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "PROPFIND", "CONNECT"):
        yield case(f"method-{method}", "/hello.py", 405, method=method.encode())
    yield case("method-HEAD", "/hello.py", 200, method=b"HEAD")
    yield case("method-post-to-get-only", "/getonly.py", 405, method=b"POST", body=b"")
    yield case("method-get-to-post-only", "/api/echo.py", 405, headers=K)
    yield case("method-lowercase", "/hello.py", 400, method=b"get")
    yield case("method-control-char", "/hello.py", 400, method=b"G\x01T")
    yield case("method-200-chars", "/hello.py", 400, method=b"X" * 200)


def key_cases() -> Iterator[Case]:
    api, rotated, admin = API_KEY.encode(), API_KEY_ROTATED.encode(), ADMIN_KEY.encode()
    wrong = WRONG_KEYS[0].encode()
    table: list[tuple[str, Headers, int]] = [
        ("right", ((b"X-API-Key", api),), 200),
        ("rotated", ((b"X-API-Key", rotated),), 200),
        ("missing", (), 401),
        ("empty", ((b"X-API-Key", b""),), 401),
        ("wrong", ((b"X-API-Key", wrong),), 401),
        ("wrong-case-value", ((b"X-API-Key", API_KEY.upper().encode()),), 401),
        ("suffixed", ((b"X-API-Key", api + b"x"),), 401),
        ("truncated", ((b"X-API-Key", api[:-1]),), 401),
        ("both-keys-comma", ((b"X-API-Key", api + b"," + rotated),), 401),
        ("duplicated", ((b"X-API-Key", api), (b"X-API-Key", api)), 401),
        ("right-then-wrong", ((b"X-API-Key", api), (b"X-API-Key", wrong)), 401),
        ("wrong-then-right", ((b"X-API-Key", wrong), (b"X-API-Key", api)), 401),
        # surrounding whitespace is not part of a header value (RFC 9110 5.5)
        ("padded-spaces", ((b"X-API-Key", b"  " + api + b"  "),), 200),
        ("padded-tabs", ((b"X-API-Key", b"\t" + api + b"\t"),), 200),
        ("lowercase-name", ((b"x-api-key", api),), 200),
        ("uppercase-name", ((b"X-API-KEY", api),), 200),
        ("underscore-name", ((b"X_API_Key", api),), 401),  # gunicorn drops it
        ("space-before-colon", ((b"X-API-Key ", api),), 400),
        ("nul-in-value", ((b"X-API-Key", api + b"\x00"),), 400),
        ("latin1-byte", ((b"X-API-Key", api + b"\xff"),), 401),
        ("obs-fold", ((b"X-API-Key", api + b"\r\n folded"),), 400),
        ("admin-key-in-api-header", ((b"X-API-Key", admin),), 401),
        ("api-key-in-admin-header", ((b"X-Admin-Key", api),), 401),
        ("bearer", ((b"Authorization", b"Bearer " + api),), 401),
    ]
    for id, headers, expected in table:
        yield case(f"key-api-{id}", "/api/hello.py", expected, headers=headers)
    yield case("key-api-in-query", f"/api/hello.py?api_key={API_KEY}", 401)
    yield case("key-api-unknown-script-nokey", "/api/nope.py", 401)
    yield case("key-api-unknown-script-key", "/api/nope.py", 404, headers=K)
    admin_table: list[tuple[str, Headers, int]] = [
        ("right", ((b"X-Admin-Key", admin),), 200),
        ("missing", (), 401),
        ("empty", ((b"X-Admin-Key", b""),), 401),
        ("wrong", ((b"X-Admin-Key", wrong),), 401),
        ("duplicated", ((b"X-Admin-Key", admin), (b"X-Admin-Key", admin)), 401),
        ("api-key", ((b"X-API-Key", api),), 401),
        ("lowercase-name", ((b"x-admin-key", admin),), 200),
        ("unknown-script-nokey", (), 401),
    ]
    for id, headers, expected in admin_table:
        target = "/admin/nope.py" if id.startswith("unknown") else "/admin/stats.py"
        yield case(f"key-admin-{id}", target, expected, headers=headers)


def xff(*values: bytes, name: bytes = b"X-Forwarded-For") -> Headers:
    return tuple((name, v) for v in values)


def forwarding_cases() -> Iterator[Case]:
    # No trusted proxy: the header is noise. 127.0.0.1 is allowed on "main"...
    for id, value in [
        ("denied-address", b"1.2.3.4"),
        ("garbage", b"not-an-ip"),
        ("empty", b""),
        ("ipv6", b"::1"),
        ("chain", b"10.0.0.1, 1.2.3.4"),
        ("4k", b"1.2.3.4, " * 450),
    ]:
        yield case(f"xff-untrusted-peer-{id}", "/hello.py", 200, headers=xff(value))
    # ...and "noproxy" only allows 10/8, which no header can claim, on any path.
    claims = [
        ("none", ()),
        ("xff", xff(b"10.0.0.1")),
        ("xff-chain", xff(b"10.0.0.1, 10.0.0.2")),
        ("xff-ipv6-mapped", xff(b"::ffff:10.0.0.1")),
        ("x-real-ip", xff(b"10.0.0.1", name=b"X-Real-IP")),
        ("forwarded", xff(b"for=10.0.0.1", name=b"Forwarded")),
        ("x-client-ip", xff(b"10.0.0.1", name=b"X-Client-IP")),
        ("underscore-xff", xff(b"10.0.0.1", name=b"X_Forwarded_For")),
    ]
    for id, headers in claims:
        yield case(f"xff-noproxy-root-{id}", "/hello.py", 403, "noproxy", headers=headers)
    forged = xff(b"10.0.0.1")
    for id, target, headers in [
        ("health", "/_platform/health", forged),
        ("metrics", "/_platform/metrics", forged),
        ("routes", "/_platform/routes", forged),
        ("api-with-key", "/api/hello.py", K + forged),
        ("admin-with-key", "/admin/stats.py", A + forged),
        ("unknown-script", "/nope.py", forged),  # the IP check comes before any lookup
        ("traversal", "/../outside/evil.py", forged),
    ]:
        yield case(f"xff-noproxy-{id}", target, 403, "noproxy", headers=headers)
    # Behind the trusted proxy 127.0.0.1: the right-most address that is not a proxy.
    for id, headers, expected in [
        ("none", (), 403),  # the proxy itself is the client
        ("allowed", xff(b"10.1.2.3"), 200),
        ("denied", xff(b"1.2.3.4"), 403),
        ("forged-left-denied", xff(b"10.1.2.3, 1.2.3.4"), 403),
        ("forged-left-allowed", xff(b"1.2.3.4, 10.1.2.3"), 200),
        ("allowed-then-proxy", xff(b"10.1.2.3, 127.0.0.1"), 200),
        ("denied-then-proxy", xff(b"1.2.3.4, 127.0.0.1"), 403),
        ("only-proxy", xff(b"127.0.0.1"), 403),
        ("empty", xff(b""), 403),
        ("garbage", xff(b"not-an-ip"), 403),
        ("unknown", xff(b"unknown"), 403),
        ("with-port", xff(b"10.1.2.3:8080"), 200),
        ("empty-hops", xff(b" , ,10.1.2.3, "), 200),
        ("cidr", xff(b"10.1.2.3/8"), 403),
        ("leading-zeros", xff(b"010.001.002.003"), 403),
        ("integer-form", xff(b"167837955"), 403),
        ("hex-form", xff(b"0x0a010203"), 403),
        ("ipv6-allowed", xff(b"fd00::1"), 200),
        ("ipv6-bracket-port", xff(b"[fd00::1]:443"), 200),
        ("ipv6-bracket", xff(b"[fd00::1]"), 200),
        ("ipv6-unclosed-bracket", xff(b"[fd00::1"), 403),
        ("ipv6-denied", xff(b"fe80::1"), 403),
        ("ipv6-loopback", xff(b"::1"), 403),
        ("ipv6-mapped-v4", xff(b"::ffff:10.1.2.3"), 200),
        ("ipv6-mapped-v4-bracket", xff(b"[::ffff:10.1.2.3]"), 200),
        ("two-headers-allowed-last", xff(b"1.2.3.4", b"10.1.2.3"), 200),
        ("two-headers-denied-last", xff(b"10.1.2.3", b"1.2.3.4"), 403),
        ("lowercase-name", xff(b"10.1.2.3", name=b"x-forwarded-for"), 200),
        ("underscore-name", xff(b"10.1.2.3", name=b"X_Forwarded_For"), 403),
        ("x-real-ip", xff(b"10.1.2.3", name=b"X-Real-IP"), 403),
        ("forwarded", xff(b"for=10.1.2.3", name=b"Forwarded"), 403),
        ("4k-chain", xff(b"1.2.3.4, " * 450 + b"10.1.2.3"), 200),
        ("nul", xff(b"10.1.2.3\x00"), 400),
        ("9k", xff(b"10.1.2.3, " * 900), 431),
    ]:
        yield case(f"xff-proxy-{id}", "/hello.py", expected, "proxy", headers=headers)
    for id, target, headers, expected in [
        ("admin-allowed", "/admin/stats.py", xff(b"10.1.2.3"), 200),
        ("admin-ipv6-not-on-admin-list", "/admin/stats.py", xff(b"fd00::1"), 403),
        ("admin-denied", "/admin/stats.py", xff(b"1.2.3.4"), 403),
        ("admin-proxy-itself", "/admin/stats.py", (), 403),
        ("admin-forged-left", "/admin/stats.py", xff(b"10.1.2.3, fd00::1"), 403),
        ("platform-proxy-itself", "/_platform/health", (), 403),
        ("platform-denied", "/_platform/health", xff(b"1.2.3.4"), 403),
        ("platform-metrics-denied", "/_platform/metrics", xff(b"1.2.3.4"), 403),
        ("platform-allowed", "/_platform/health", xff(b"10.1.2.3"), 200),
        ("api-allowed-nokey", "/api/hello.py", xff(b"10.1.2.3"), 401),
        ("api-allowed-key", "/api/hello.py", xff(b"10.1.2.3") + K, 200),
        ("api-denied-key", "/api/hello.py", xff(b"1.2.3.4") + K, 403),
        ("api-denied-unknown", "/api/nope.py", xff(b"1.2.3.4"), 403),
    ]:
        yield case(f"xff-proxy-{id}", target, expected, "proxy", headers=headers)


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def tp(value: bytes) -> Headers:
    return ((b"traceparent", value),)


def trace_cases() -> Iterator[Case]:
    valid = f"00-{TRACE}-00f067aa0ba902b7-01".encode()
    yield case("traceparent-valid", "/hello.py", 200, headers=tp(valid), trace=TRACE)
    for id, value in [
        ("garbage", b"garbage"),
        ("zero-trace-id", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"),
        ("zero-span-id", f"00-{TRACE}-0000000000000000-01".encode()),
        ("version-ff", f"ff-{TRACE}-00f067aa0ba902b7-01".encode()),
        ("short-trace-id", b"00-4bf92f35-00f067aa0ba902b7-01"),
        ("non-hex", b"00-" + b"z" * 32 + b"-00f067aa0ba902b7-01"),
        ("5k", b"00-" + b"a" * 5000),
        ("empty", b""),
    ]:
        yield case(f"traceparent-{id}", "/hello.py", 200, headers=tp(value), trace="fresh")
    yield case("traceparent-duplicated", "/hello.py", 200, headers=tp(valid) + tp(b"garbage"))
    yield case("traceparent-nul", "/hello.py", 400, headers=tp(valid + b"\x00"))


def header_size_cases() -> Iterator[Case]:
    many = tuple((b"X-H%d" % i, b"1") for i in range(120))
    for id, headers, expected in [
        ("one-9k-header", ((b"X-Big", b"a" * 9000),), 431),
        ("120-headers", many, 431),
        ("9k-key", ((b"X-API-Key", b"a" * 9000),), 431),
        ("8k-cookie", ((b"Cookie", b"c=" + b"a" * 8000),), 200),
    ]:
        yield case(f"headers-{id}", "/hello.py", expected, headers=headers)


def chunked(target: bytes, payload: bytes, headers: Headers = K) -> bytes:
    head = build_request(b"POST", target, (*headers, (b"Transfer-Encoding", b"chunked")))
    return head + b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"


def with_length(target: bytes, *lengths: bytes, extra: Headers = (), tail: bytes = b"") -> bytes:
    """A request whose Content-Length headers say whatever the case needs."""
    headers = (*K, *((b"Content-Length", n) for n in lengths), *extra)
    return build_request(b"POST", target, headers) + tail


def body_cases() -> Iterator[Case]:
    echo = b"/api/echo.py"
    json_type = (*K, (b"Content-Type", b"application/json"))
    form_type = (*K, (b"Content-Type", b"application/x-www-form-urlencoded"))
    multipart = (*K, (b"Content-Type", b"multipart/form-data; boundary=x"))
    # id, headers, body, status; a 200 must echo the body byte for byte
    sized: list[tuple[str, Headers, bytes, int]] = [
        ("at-limit", K, b"a" * MAX_BODY, 200),
        ("over-by-one", K, b"a" * (MAX_BODY + 1), 413),
        ("64k", K, b"a" * 65536, 413),
        ("invalid-json", json_type, b'{"a": 1,,}', 200),
        ("binary", K, bytes(range(256)) * 2, 200),
        ("bad-form", form_type, b"%%%&&&==%zz", 200),
        ("bad-multipart", multipart, b"--x\r\nnot a part", 200),
        ("nokey-over-limit", (), b"a" * 2000, 401),
    ]
    for id, headers, body, status in sized:
        yield case(f"body-{id}", echo, status, method=b"POST", headers=headers, body=body,
                   echo=body if status == 200 else None, runs=status == 200)  # fmt: skip
    tail = b"0123456789"
    for id, raw, status in [
        ("claims-1tb", with_length(echo, b"1000000000000", tail=tail), 413),
        ("lying-length", with_length(echo, b"5000", tail=tail), 413),
        ("negative-length", with_length(echo, b"-1", tail=tail), 400),
        ("non-numeric-length", with_length(echo, b"abc", tail=tail), 400),
        ("two-lengths", with_length(echo, b"5", b"6", tail=b"123456"), 400),
        ("length-and-chunked",
         with_length(echo, b"5", extra=((b"Transfer-Encoding", b"chunked"),), tail=b"0\r\n\r\n"),
         400),
    ]:  # fmt: skip
        yield case(f"body-{id}", echo, status, raw=raw, runs=False)
    small = b"c" * 100
    yield case("body-chunked-under-limit", echo, 200, raw=chunked(echo, small), echo=small,
               runs=True)  # fmt: skip
    yield case("body-chunked-over-limit", echo, 413, raw=chunked(echo, b"c" * (MAX_BODY * 2)),
               runs=False)  # fmt: skip
    yield case("body-root-zone-over-limit", "/echo_root.py", 413, method=b"POST",
               body=b"a" * 2000, runs=False)  # fmt: skip
    yield case("body-get-over-limit", "/hello.py", 413, body=b"a" * 2000)
    yield case("body-unknown-script", "/api/nope.py", 404, method=b"POST", headers=K,
               body=b"a" * 2000)  # fmt: skip


def all_cases() -> list:
    cases = [
        *path_cases(),
        *traversal_cases(),
        *method_cases(),
        *key_cases(),
        *forwarding_cases(),
        *trace_cases(),
        *header_size_cases(),
        *body_cases(),
    ]
    return [pytest.param(c, id=c.id) for c in cases]


CASES = all_cases()
OUTCOMES: collections.Counter[str] = collections.Counter()


class Servers:
    """The module's gunicorn servers, each started the first time a case needs it."""

    def __init__(self, stack: contextlib.ExitStack, scripts: Path, tmp_factory) -> None:
        self.stack = stack
        self.scripts = scripts
        self.tmp_factory = tmp_factory
        self.running: dict[str, Gunicorn] = {}

    def __getitem__(self, name: str) -> Gunicorn:
        if name not in self.running:
            tmp = self.tmp_factory.mktemp(f"hostile-{name}")
            self.running[name] = self.stack.enter_context(
                gunicorn(self.scripts, tmp, workers=3, env=SERVER_ENV[name])
            )
        return self.running[name]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("hostile-tree"))


@pytest.fixture(scope="module")
def servers(tree: Tree, tmp_path_factory: pytest.TempPathFactory, request) -> Iterator[Servers]:
    with contextlib.ExitStack() as stack:
        yield Servers(stack, tree.scripts, tmp_path_factory)
        tried = sum(OUTCOMES.values())
        summary = ", ".join(f"{status}: {n}" for status, n in sorted(OUTCOMES.items()))
        record_figure(request.config, f"hostile: {tried} cases sent; outcomes {summary}")


def send(server: Gunicorn, c: Case) -> Reply:
    data = c.raw or build_request(c.method, c.target, c.headers, c.body)
    return send_raw(server.port, data)


@pytest.mark.parametrize("c", CASES)
def test_hostile_request(c: Case, servers: Servers, tree: Tree) -> None:
    server = servers[c.server]
    runs_before = tree.runs()
    reply = send(server, c)
    OUTCOMES[str(reply.status)] += 1

    assert reply.status == c.expected, (reply.status, reply.body[:300])
    text = reply.body.decode("latin-1") + str(reply.headers)
    assert MARKER not in text and PASSWD_MARKER not in text
    if reply.status >= 400 and reply.from_app:
        assert_clean_error(reply, str(tree.scripts))
    if c.echo is not None:
        assert reply.body == c.echo
    if c.runs is not None:
        assert (tree.runs() > runs_before) is c.runs, f"script should run: {c.runs}"
    if c.trace is not None:
        trace_id = reply.headers.get("x-trace-id", "")
        assert TRACE_ID.match(trace_id) and trace_id != "0" * 32, trace_id
        if c.trace != "fresh":
            assert trace_id == c.trace


def test_case_table_is_large_and_covers_every_outcome() -> None:
    assert len(CASES) >= 200
    expected = {param.values[0].expected for param in CASES}
    assert {200, 400, 401, 403, 404, 405, 413, 414, 431} <= expected


def test_keys_never_reach_a_log(servers: Servers) -> None:
    """Keys in headers and in the query string: none in the log file or gunicorn's output."""
    main = servers["main"]
    query = f"/api/hello.py?api_key={API_KEY}&token={API_KEY_ROTATED}&auth={ADMIN_KEY}"
    assert fetch(main.port, query, headers=K).status == 200
    for server in servers.running.values():
        for path in (server.log_file, server.output):
            text = path.read_text(encoding="utf-8", errors="replace")
            leaked = [key for key in ALL_KEYS if key in text]
            assert not leaked, f"{leaked} in {path}"


def test_log_lines_stay_json_after_hostile_input(servers: Servers) -> None:
    """Paths with CR, LF, NUL and invalid UTF-8 cannot break or forge a log line."""
    main = servers["main"]
    assert fetch(main.port, "/hello.py%0d%0a%7b%22forged%22%3a1%7d").status == 404
    for server in servers.running.values():
        records = read_log(server.log_file)
        assert records and all("forged" not in r for r in records)
        assert all(r["message"] != "request" or r["status"] != 500 for r in records)

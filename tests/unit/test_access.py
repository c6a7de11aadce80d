"""Client IP behind proxies, allowlists and keys: tables of input and outcome."""

from __future__ import annotations

import pytest

from service.access.clients import client_ip, ip_allowed
from service.access.guard import caller_by_key
from service.access.keys import Keyring, env_keys, key_digest
from service.config import parse_networks
from service.http.errors import AccessDenied
from tests.unit.conftest import ADMIN, ADMIN_KEY, API, API_KEY

PROXIES = parse_networks("TRUSTED_PROXIES", "10.0.0.1, 10.0.0.2, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # Untrusted peer: X-Forwarded-For is ignored entirely.
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),
        ("203.0.113.9", [], "203.0.113.9"),
        # Trusted proxy: right-most address that is not a proxy.
        ("10.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        ("10.0.0.1", ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),
        ("10.0.0.1", ["6.6.6.6, 198.51.100.7, 10.0.0.2"], "198.51.100.7"),
        ("10.0.0.1", ["6.6.6.6", "198.51.100.7"], "198.51.100.7"),
        ("fd00::1", ["2001:db8::5"], "2001:db8::5"),
        ("10.0.0.1", ["[2001:db8::5]:4711"], "[2001:db8::5]:4711"),
        ("::ffff:10.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        # Only proxies all the way: the nearest proxy is the client.
        ("10.0.0.1", ["10.0.0.2"], "10.0.0.1"),
        ("10.0.0.1", [], "10.0.0.1"),
        # Garbage is kept as the client, so it matches no allowlist.
        ("10.0.0.1", ["not-an-ip"], "not-an-ip"),
        ("10.0.0.1", ["1.2.3.4, , "], "1.2.3.4"),
    ],
)
def test_client_ip(peer, xff, expected):
    assert client_ip(peer, xff, PROXIES) == expected


def test_client_ip_without_trusted_proxies_ignores_header():
    assert client_ip("127.0.0.1", ["1.2.3.4"], ()) == "127.0.0.1"


ALLOW = parse_networks("API_TRUSTED_IPS", "127.0.0.1, 192.168.0.0/16, 2001:db8::/32")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("192.168.44.5", True),
        ("2001:db8::1", True),
        ("::ffff:192.168.1.1", True),
        ("[2001:db8::1]:443", True),
        ("127.0.0.2", False),
        ("10.0.0.1", False),
        ("2001:db9::1", False),
        ("not-an-ip", False),
        ("", False),
    ],
)
def test_ip_allowlist(address, allowed):
    assert ip_allowed(address, ALLOW) is allowed


def test_empty_allowlist_admits_everyone():
    assert ip_allowed("8.8.8.8", ())


def key_matches(presented: list[str], keys: tuple[str, ...]) -> bool:
    """Would these header values pass as one of these API_KEY keys?"""
    ring = Keyring(env_keys([key_digest(k) for k in keys], []))
    try:
        caller_by_key("api", presented, ring, "api_key", "X-API-Key")
    except AccessDenied:
        return False
    return True


@pytest.mark.parametrize(
    ("presented", "keys", "ok"),
    [
        (["k1"], ("k1",), True),
        (["k2"], ("k1", "k2"), True),
        (["k3"], ("k1", "k2"), False),
        ([], ("k1",), False),
        ([""], ("k1",), False),
        ([" k1"], ("k1",), False),
        (["k1", "k1"], ("k1",), False),
        (["K1"], ("k1",), False),
        (["k1"], (), False),
        (["ключ"], ("ключ",), True),
    ],
)
def test_key_matches(presented, keys, ok):
    assert key_matches(presented, keys) is ok


@pytest.mark.parametrize(
    ("path", "headers", "status", "reason"),
    [
        ("/api/hello.py", {}, 401, "api_key"),
        ("/api/hello.py", {"X-API-Key": "wrong"}, 401, "api_key"),
        ("/api/hello.py", {"X-API-Key": ""}, 401, "api_key"),
        ("/api/hello.py", ADMIN, 401, "api_key"),
        ("/api/missing.py", {}, 401, "api_key"),
        ("/admin/stats.py", {}, 401, "admin_key"),
        ("/admin/stats.py", API, 401, "admin_key"),
        ("/admin/missing.py", {"X-Admin-Key": "nope"}, 401, "admin_key"),
        ("/api/hello.py", {"x-api-key": API_KEY}, 200, None),
        ("/admin/stats.py", {"x-admin-key": ADMIN_KEY}, 200, None),
        ("/hello.py", {}, 200, None),
    ],
)
def test_zone_keys(client, path, headers, status, reason):
    response = client.get(path, headers=headers)
    assert response.status_code == status
    if reason:
        assert response.get_json()["reason"] == reason
        assert response.get_json()["error"] == "unauthorized"


def test_unknown_script_without_key_is_indistinguishable(client):
    known = client.get("/api/hello.py")
    unknown = client.get("/api/does-not-exist.py")
    assert known.status_code == unknown.status_code == 401
    strip = lambda r: {k: v for k, v in r.get_json().items() if k != "trace_id"}  # noqa: E731
    assert strip(known) == strip(unknown)


def test_key_rotation_accepts_old_and_new(make_app):
    client = make_app(api_keys=("old-key", "new-key")).test_client()
    assert client.get("/api/hello.py", headers={"X-API-Key": "old-key"}).status_code == 200
    assert client.get("/api/hello.py", headers={"X-API-Key": "new-key"}).status_code == 200
    assert client.get("/api/hello.py", headers={"X-API-Key": "older"}).status_code == 401


@pytest.mark.parametrize(
    ("zone_path", "field"), [("/api/hello.py", "api_keys"), ("/admin/stats.py", "admin_keys")]
)
def test_zone_without_key_is_closed(make_app, zone_path, field):
    client = make_app(**{field: ()}).test_client()
    response = client.get(zone_path, headers={"X-API-Key": "", "X-Admin-Key": ""})
    assert response.status_code == 403
    assert response.get_json()["reason"] == "zone_disabled"


def test_auth_off_opens_zone_on_purpose(make_app):
    client = make_app(api_keys=(), api_auth=False, admin_keys=(), admin_auth=False).test_client()
    assert client.get("/api/hello.py").status_code == 200
    assert client.get("/admin/stats.py").status_code == 200


def test_ip_allowlist_applies_everywhere(make_app):
    client = make_app(api_trusted_ips=parse_networks("x", "10.9.9.9")).test_client()
    for path in ("/hello.py", "/api/hello.py", "/_platform/health", "/_platform/metrics", "/nope"):
        response = client.get(path, headers=API)
        assert response.status_code == 403, path
        assert response.get_json()["reason"] == "ip"


def test_ip_check_runs_before_key_check(make_app):
    client = make_app(api_trusted_ips=parse_networks("x", "10.9.9.9")).test_client()
    assert client.get("/api/hello.py").get_json()["reason"] == "ip"


def test_admin_allowlist_only_guards_admin(make_app):
    client = make_app(admin_trusted_ips=parse_networks("x", "10.9.9.9")).test_client()
    assert client.get("/api/hello.py", headers=API).status_code == 200
    denied = client.get("/admin/stats.py", headers=ADMIN)
    assert denied.status_code == 403
    assert denied.get_json()["reason"] == "ip"


def test_forwarded_for_from_trusted_proxy_decides(make_app):
    client = make_app(
        trusted_proxies=parse_networks("x", "127.0.0.1"),
        api_trusted_ips=parse_networks("x", "198.51.100.7"),
    ).test_client()
    ok = client.get("/hello.py", headers={"X-Forwarded-For": "198.51.100.7"})
    assert ok.status_code == 200
    # A client-forged left part is not believed: the proxy appended the real peer.
    forged = client.get("/hello.py", headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.1"})
    assert forged.status_code == 403


def test_forwarded_for_from_untrusted_peer_is_ignored(make_app):
    client = make_app(api_trusted_ips=parse_networks("x", "198.51.100.7")).test_client()
    response = client.get("/hello.py", headers={"X-Forwarded-For": "198.51.100.7"})
    assert response.status_code == 403


def test_non_ascii_key_sent_as_utf8_bytes_matches():
    # What WSGI hands over for a UTF-8 header value: its bytes decoded as latin-1.
    on_the_wire = "ключ".encode().decode("latin-1")
    assert key_matches([on_the_wire], ("ключ",))
    assert not key_matches([on_the_wire], ("клюк",))

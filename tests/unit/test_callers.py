"""Named keys in the pipeline: scopes, expiry, rate limits, the audit trail, /_platform/keys."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from service.config import parse_networks
from tests.unit.conftest import ADMIN, ADMIN_KEY, API, API_KEY, log_records, write_scripts
from tests.unit.test_observability import record_spans

REPORTS = "sg_reports_0123456789abcdefghijklmnopqrstuvwxyz"
EXPIRED = "sg_expired_0123456789abcdefghijklmnopqrstuvwxyz"
LIMITED = "sg_limited_0123456789abcdefghijklmnopqrstuvwxyz"
SCRAPER = "sg_scraper_0123456789abcdefghijklmnopqrstuvwxyz"
KEYS = {
    "reports-bot": (REPORTS, '["api:reports/*"]', 'methods = ["GET"]'),
    "old-bot": (EXPIRED, '["api:*"]', "expires = 2001-01-01T00:00:00Z"),
    "busy-bot": (LIMITED, '["api:*"]', 'rate_limit = "3/minute"'),
    "prometheus": (SCRAPER, '["platform:metrics"]', ""),
}
ECHO_CALLER = """
def main(request):
    return {
        "caller": request.environ.get("scriptgate.caller"),
        "owner": request.environ.get("scriptgate.caller_owner"),
        "key_header": request.headers.get("X-API-Key"),
    }
"""


def write_keys(path: Path, keys: dict[str, tuple[str, str, str]]) -> Path:
    text = ""
    for key_id, (secret, scopes, extra) in keys.items():
        digest = hashlib.sha256(secret.encode()).hexdigest()
        text += f'[keys.{key_id}]\nowner = "{key_id}@example.com"\n'
        text += f'hash = "sha256:{digest}"\nscopes = {scopes}\n{extra}\n\n'
    path.write_text(text)
    return path


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    return write_keys(tmp_path / "keys.toml", KEYS)


@pytest.fixture
def client(make_app, keys_path, scripts_dir):
    write_scripts(scripts_dir, {"api/caller.py": ECHO_CALLER, "api/reports/who.py": ECHO_CALLER})
    return make_app(keys_file=keys_path).test_client()


def body(response) -> dict:
    return {k: v for k, v in response.get_json().items() if k != "trace_id"}


def key(secret: str, header: str = "X-API-Key") -> dict[str, str]:
    return {header: secret}


def test_scoped_key_calls_its_scripts(client):
    response = client.get("/api/reports/daily.py", headers=key(REPORTS))
    assert response.status_code == 200
    assert response.get_json() == {"value": 42, "prefix": "lib"}


@pytest.mark.parametrize("path", ["/api/hello.py", "/api/missing.py", "/api/other/x.py"])
def test_outside_its_scope_known_and_unknown_scripts_look_the_same(client, path):
    response = client.get(path, headers=key(REPORTS))
    assert response.status_code == 403
    assert body(response) == {"error": "forbidden", "reason": "scope"}


def test_inside_its_scope_an_unknown_script_is_404(client):
    assert client.get("/api/reports/missing.py", headers=key(REPORTS)).status_code == 404


def test_method_outside_the_keys_methods_is_403(client):
    response = client.post("/api/reports/daily.py", headers=key(REPORTS))
    assert (response.status_code, body(response)["reason"]) == (403, "scope")


@pytest.mark.parametrize("path", ["/admin/stats.py", "/admin/missing.py"])
def test_key_without_a_scope_in_the_zone_is_401_like_a_wrong_one(client, path):
    response = client.get(path, headers=key(REPORTS, "X-Admin-Key"))
    assert (response.status_code, body(response)["reason"]) == (401, "admin_key")


def test_expired_key_is_401_and_logged_with_its_id(client, log_file):
    response = client.get("/api/hello.py", headers=key(EXPIRED))
    assert response.status_code == 401
    assert body(response) == {"error": "unauthorized", "reason": "expired"}
    record = log_records(log_file)[-1]
    assert (record["caller"], record["status"]) == ("old-bot", 401)


def test_rate_limit_is_429_with_retry_after_and_counted(client, log_file):
    statuses = [client.get("/api/hello.py", headers=key(LIMITED)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    over = client.get("/api/hello.py", headers=key(LIMITED))
    assert over.status_code == 429
    assert body(over) == {"error": "too many requests", "reason": "rate_limit"}
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert client.get("/api/hello.py", headers=API).status_code == 200  # other keys unaffected
    metrics = client.get("/_platform/metrics").get_data(as_text=True)
    assert (
        'scriptgate_requests_rejected_total{reason="rate_limit",script="__unmatched__",zone="api"}'
        " 1.0" in metrics
    )
    assert (
        'scriptgate_caller_refusals_total{caller="busy-bot",reason="rate_limit",zone="api"} 1.0'
        in metrics
    )


def test_every_request_line_names_its_caller(client, log_file):
    client.get("/api/hello.py", headers=API)
    client.get("/api/reports/daily.py", headers=key(REPORTS))
    client.get("/hello.py")
    client.get("/api/hello.py", headers=key("wrong"))
    callers = [r["caller"] for r in log_records(log_file) if r["message"] == "request"]
    assert callers == ["api-key-1", "reports-bot", "anonymous", "anonymous"]
    text = log_file.read_text()
    assert REPORTS not in text and API_KEY not in text


def test_calls_are_counted_per_caller_and_script(client):
    for _ in range(2):
        client.get("/api/reports/daily.py", headers=key(REPORTS))
    client.get("/api/hello.py", headers=key(REPORTS))
    metrics = client.get("/_platform/metrics").get_data(as_text=True)
    line = 'scriptgate_caller_requests_total{{caller="{}",script="{}",zone="api"}} {}'
    assert line.format("reports-bot", "reports/daily.py", "2.0") in metrics
    assert line.format("reports-bot", "__unmatched__", "1.0") in metrics
    assert (
        'scriptgate_caller_refusals_total{caller="reports-bot",reason="scope",zone="api"} 1.0'
        in metrics
    )


def test_script_learns_the_caller_but_never_sees_the_key(client):
    reply = client.get("/api/reports/who.py", headers=key(REPORTS)).get_json()
    assert reply == {
        "caller": "reports-bot",
        "owner": "reports-bot@example.com",
        "key_header": None,
    }
    reply = client.get("/api/caller.py", headers=API).get_json()
    assert reply == {"caller": "api-key-1", "owner": "API_KEY", "key_header": None}


def test_server_span_carries_enduser_id(make_app, keys_path, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    app = make_app(keys_file=keys_path)
    exporter = record_spans(app)
    app.test_client().get("/api/reports/daily.py", headers=key(REPORTS))
    app.test_client().get("/hello.py")
    servers = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert servers[0].attributes["enduser.id"] == "reports-bot"
    assert "enduser.id" not in servers[1].attributes


def test_zone_no_key_may_call_is_closed(make_app, keys_path):
    client = make_app(keys_file=keys_path, admin_keys=()).test_client()
    response = client.get("/admin/stats.py", headers=key(ADMIN_KEY, "X-Admin-Key"))
    assert (response.status_code, body(response)["reason"]) == (403, "zone_disabled")


def test_keys_file_alone_opens_a_zone(make_app, keys_path):
    client = make_app(keys_file=keys_path, api_keys=()).test_client()
    assert client.get("/api/reports/daily.py", headers=key(REPORTS)).status_code == 200
    assert client.get("/api/hello.py").get_json()["reason"] == "api_key"


# -- /_platform/keys --------------------------------------------------------------------


def test_keys_endpoint_lists_every_key_without_secrets(client):
    client.get("/api/reports/daily.py", headers=key(REPORTS))
    response = client.get("/_platform/keys", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    listing = {entry["id"]: entry for entry in response.get_json()["keys"]}
    assert sorted(listing) == [
        "admin-key-1",
        "api-key-1",
        "busy-bot",
        "old-bot",
        "prometheus",
        "reports-bot",
    ]
    assert listing["reports-bot"] == {
        "id": "reports-bot",
        "owner": "reports-bot@example.com",
        "source": "keys_file",
        "scopes": ["api:reports/*"],
        "methods": ["GET", "HEAD"],
        "expires": None,
        "expired": False,
        "rate_limit": None,
        "last_used": listing["reports-bot"]["last_used"],
    }
    assert listing["reports-bot"]["last_used"].endswith("Z")
    assert listing["old-bot"]["expired"] is True
    assert listing["old-bot"]["expires"] == "2001-01-01T00:00:00Z"
    assert listing["busy-bot"]["last_used"] is None
    text = response.get_data(as_text=True)
    for secret in (REPORTS, API_KEY, ADMIN_KEY, hashlib.sha256(REPORTS.encode()).hexdigest()):
        assert secret not in text


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 401, "admin_key"),
        (key("wrong", "X-Admin-Key"), 401, "admin_key"),
        (key(API_KEY, "X-Admin-Key"), 401, "admin_key"),  # no platform scope at all
        (key(SCRAPER, "X-Admin-Key"), 403, "scope"),  # platform:metrics only
        (ADMIN, 200, None),
    ],
)
def test_keys_endpoint_needs_a_key_for_it(client, headers, status, reason):
    response = client.get("/_platform/keys", headers=headers)
    assert response.status_code == status
    if reason:
        assert response.get_json()["reason"] == reason


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/_platform/health", {}, 200),
        ("/_platform/metrics", {}, 403),
        ("/_platform/routes", {}, 403),
        ("/_platform/metrics", key(SCRAPER, "X-Admin-Key"), 200),
        ("/_platform/routes", key(SCRAPER, "X-Admin-Key"), 403),
        ("/_platform/routes", ADMIN, 200),
        ("/_platform/routes", key("wrong", "X-Admin-Key"), 401),
    ],
)
def test_platform_trusted_ips_guard_routes_and_metrics(make_app, keys_path, path, headers, status):
    client = make_app(
        keys_file=keys_path, platform_trusted_ips=parse_networks("x", "10.0.0.0/8")
    ).test_client()
    assert client.get(path, headers=headers).status_code == status


def test_trusted_platform_address_needs_no_key(make_app, keys_path):
    client = make_app(
        keys_file=keys_path, platform_trusted_ips=parse_networks("x", "127.0.0.1")
    ).test_client()
    assert client.get("/_platform/metrics").status_code == 200
    assert client.get("/_platform/keys").status_code == 401  # keys: the key, always


# -- scripts' own secrets ----------------------------------------------------------------


def test_secret_helper_reads_secrets_dir_and_the_log_never_shows_the_value(
    make_app, scripts_dir, tmp_path, log_file
):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "db_password").write_text('pa"ss-w0rd-ü\n')
    write_scripts(
        scripts_dir,
        {
            "uses.py": textwrap.dedent(
                """
                from service.scripts.secrets import secret
                def main(request):
                    value = secret("db_password")
                    if request.args.get("fail"):
                        raise RuntimeError(f"cannot connect with {value}")
                    return {"length": len(value)}
                """
            ),
            "missing.py": textwrap.dedent(
                """
                from service.scripts.secrets import secret
                def main(request):
                    return secret(request.args["name"])
                """
            ),
        },
    )
    client = make_app(secrets_dir=secrets).test_client()
    assert client.get("/uses.py").get_json() == {"length": 12}
    failed = client.get("/uses.py?fail=1")
    assert failed.status_code == 500
    for name in ("nope", "../keys.toml", ".hidden"):
        assert client.get(f"/missing.py?name={name}").status_code == 500
    text = log_file.read_text()
    assert "cannot connect with ***" in text
    assert "pa" + '\\"ss' not in text and 'pa"ss' not in text
    assert "no secret 'nope' in " + str(secrets) in text
    assert "is not a secret's file name" in text


@pytest.mark.parametrize("api_auth", [True, False])
def test_may_call_as_answers_as_may_call_with_the_key_in_each_zones_header(
    make_app, keys_path, api_auth
) -> None:
    """The console asks may_call_as of the caller the pipeline identified; it must say what
    may_call says of the same key sent in each zone's header, for every key and zone."""
    from werkzeug.datastructures import Headers

    from service.access.guard import ZONE_KEY_HEADERS, caller_of_any_zone, may_call, may_call_as

    app = make_app(keys_file=keys_path, api_auth=api_auth)
    rt = app.extensions["scriptgate"]
    keyring = rt.callers.keyring()
    paths = {"root": ["hello.py"], "api": ["hello.py", "reports/daily.py"], "admin": ["stats.py"]}
    signed_in = [(None, None)] + [
        (secret, header)
        for secret in (API_KEY, ADMIN_KEY, REPORTS, EXPIRED, SCRAPER)
        for header in ("X-Admin-Key", "X-API-Key")
    ]
    compared = 0
    for secret, header in signed_in:
        sent = Headers([(header, secret)] if secret else [])
        caller = caller_of_any_zone(sent, keyring, strict=False)
        if secret is not None and caller.key is None:
            continue  # not a key of this header's zones: the console's sign-in is 401
        compared += 1
        as_zone = Headers([(h, secret) for h, _ in ZONE_KEY_HEADERS.values()] if secret else [])
        for zone, zone_paths in paths.items():
            for path in zone_paths:
                expected = may_call(zone, path, "127.0.0.1", as_zone, rt.settings, keyring)
                got = may_call_as(caller, zone, path, "127.0.0.1", rt.settings)
                assert got == expected, (secret, zone, path)
    assert compared >= 6  # anonymous and every key in at least one header

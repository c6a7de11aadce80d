"""Real Apache over TLS (the shipped vhost and redirect.conf, a `make cert` pair) in front
of real gunicorn with named keys and PLATFORM_TRUSTED_IPS.

As in test_apache.py, the client connects from 127.0.0.2 and Apache from 127.0.0.1, the
one address the replica trusts as a proxy (TRUSTED_PROXIES) and for the platform plane
(PLATFORM_TRUSTED_IPS), so the client is neither.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator

import pytest

from bench import apache
from tests.servers import Gunicorn, gunicorn, log_records, request_record
from tests.stack.conftest import make_scripts
from tests.stack.test_apache import CLIENT, PROXY, call

SECRET = "sg_tls_0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
SCRAPER = "sg_scraper_0123456789abcdefghijklmnopqrstuvwxyzAB"
ADMIN_KEY = "tls-admin-key-8d1e55"

pytestmark = pytest.mark.skipif(
    not apache.available() or not (apache.MODULES / "mod_ssl.so").exists(),
    reason="apache2 with mod_ssl not installed",
)


def keys_entry(key_id: str, secret: str, scopes: str) -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return f'[keys.{key_id}]\nowner = "ops"\nhash = "sha256:{digest}"\nscopes = {scopes}\n\n'


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[apache.ApacheFront, Gunicorn]]:
    tmp = tmp_path_factory.mktemp("apache-tls")
    keys = tmp / "keys.toml"
    keys.write_text(
        keys_entry("tls-client", SECRET, '["api:*"]')
        + keys_entry("prometheus", SCRAPER, '["platform:metrics"]')
    )
    env = {
        "TRUSTED_PROXIES": PROXY,
        "PLATFORM_TRUSTED_IPS": PROXY,
        "KEYS_FILE": str(keys),
        "ADMIN_API_KEY": ADMIN_KEY,
    }
    scripts = make_scripts(tmp / "scripts")
    (scripts / "api" / "whoami.py").write_text(
        "def main(request):\n"
        "    return {'caller': request.environ['scriptgate.caller'],"
        " 'client': request.remote_addr, 'scheme_seen': request.scheme}\n"
    )
    home = tmp / "replica"
    home.mkdir()
    with (
        gunicorn(scripts, home, workers=2, env=env) as server,
        apache.apache_front([f"127.0.0.1:{server.port}"], tmp, tls=True) as url,
    ):
        yield url, server


def test_key_and_client_address_pass_through_tls(front):
    url, server = front
    reply = call(url, "/api/whoami.py", headers={"X-API-Key": SECRET}, cert=url.cert)
    assert reply.status == 200
    assert reply.json()["caller"] == "tls-client"
    assert reply.json()["client"] == CLIENT  # Apache's X-Forwarded-For, believed from 127.0.0.1
    record = request_record(reply.headers["X-Trace-Id"], server)
    assert (record["client_ip"], record["caller"], record["status"]) == (CLIENT, "tls-client", 200)
    assert SECRET not in server.log_file.read_text()


def test_script_behind_tls_builds_https_urls(front):
    """Apache's X-Forwarded-Proto, believed from 127.0.0.1: links a script makes say https,
    even when the client claims otherwise."""
    url, _ = front
    for claim in ({}, {"X-Forwarded-Proto": "http"}):
        reply = call(url, "/scheme.py", headers=claim, cert=url.cert)
        assert reply.status == 200
        assert reply.json() == {
            "scheme": "https",
            "url_root": f"{url}/",
            "forwarded_proto": "https",
        }


def test_wrong_key_over_tls_is_the_platforms_401(front):
    url, _ = front
    reply = call(url, "/api/whoami.py", headers={"X-API-Key": "nope"}, cert=url.cert)
    assert reply.status == 401
    assert reply.json()["reason"] == "api_key"
    assert reply.json()["trace_id"] == reply.headers["X-Trace-Id"]


def test_plain_http_is_redirected_to_https(front):
    url, _ = front
    reply = call(url.plain_url, "/hello.py?name=Rico")
    assert reply.status == 308
    assert reply.headers["Location"] == f"{url}/hello.py?name=Rico"
    followed = call(reply.headers["Location"], "/hello.py?name=Rico", cert=url.cert)
    assert followed.status == 200 and followed.json() == {"message": "Hello, Rico!"}


@pytest.mark.parametrize("header", ["X-API-Key", "X-Admin-Key"])
def test_a_key_sent_in_clear_is_refused_not_redirected(front, header):
    url, server = front
    before = len(log_records(server))
    reply = call(url.plain_url, "/api/whoami.py", headers={header: SECRET})
    assert reply.status == 403
    assert "Location" not in reply.headers
    assert len(log_records(server)) == before  # it never reached the replica


def test_tls_is_real(front):
    url, _ = front
    with pytest.raises(ssl.SSLCertVerificationError):  # not signed by a CA the system trusts
        call(url, "/_platform/health")


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/_platform/health", {}, 200),  # probes: always open
        ("/_platform/metrics", {}, 403),  # the client is not in PLATFORM_TRUSTED_IPS
        ("/_platform/routes", {}, 403),
        ("/_platform/keys", {}, 401),
        ("/_platform/metrics", {"X-Admin-Key": SCRAPER}, 200),  # a key for metrics only
        ("/_platform/routes", {"X-Admin-Key": SCRAPER}, 403),
        ("/_platform/keys", {"X-Admin-Key": ADMIN_KEY}, 200),
    ],
)
def test_platform_plane_through_apache(front, path, headers, status):
    url, _ = front
    reply = call(url, path, headers=headers, cert=url.cert)
    assert reply.status == status, reply.body[:200]
    if path.endswith("/keys") and status == 200:
        ids = {entry["id"] for entry in json.loads(reply.body)["keys"]}
        assert ids == {"admin-key-1", "prometheus", "tls-client"}
        assert SECRET not in reply.body.decode() and ADMIN_KEY not in reply.body.decode()

"""Real Apache with the shipped vhost in front of two real gunicorn replicas.

The test client connects from 127.0.0.2, Apache talks to the replicas from 127.0.0.1,
and the replicas trust 127.0.0.1 only (TRUSTED_PROXIES). The client and the proxy thus
have different addresses, as in production; had the client been 127.0.0.1 too, it would
itself be a trusted proxy and its forged X-Forwarded-For would be believed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench import apache
from tests.servers import Gunicorn, gunicorn, log_records, request_record, wait_until
from tests.stack.conftest import make_scripts

CLIENT = "127.0.0.2"
PROXY = "127.0.0.1"
# Small, so that a call past its deadline is quick. The replicas and Apache are both
# configured from MAX_SCRIPT_TIMEOUT, as in docker-compose.yml (ProxyTimeout 17 s).
SCRIPT_TIMEOUT = 1
MAX_SCRIPT_TIMEOUT = 2
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# One line of the shipped `scriptgate` LogFormat (observability/apache/scriptgate.conf).
ACCESS_LINE = re.compile(
    r'^(?P<client>\S+) "(?P<request>[^"]*)" (?P<status>\d{3}) \S+ \d+ '
    r'"(?P<forwarded_for>[^"]*)" trace_id=(?P<trace_id>\S+) backend=(?P<backend>\S+)$'
)

pytestmark = pytest.mark.skipif(not apache.available(), reason="apache2 not installed")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def call(
    url: str,
    path: str,
    source: str = CLIENT,
    headers: dict[str, str] | None = None,
    cert: Path | None = None,
) -> Reply:
    """GET through the proxy from a chosen loopback source address (https: trusting
    `cert`, or the system's CAs without one)."""
    parts = urlsplit(url)
    options: dict = {"timeout": 30, "source_address": (source, 0)}
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(cert) if cert else None)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, **options)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, **options)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def access_record(front: apache.ApacheFront, trace_id: str) -> dict[str, str]:
    """Apache's access log line for one trace id, parsed (waits for the write).

    Apache logs a request after the client has its response, so the line may not be
    there yet when the reply arrives; and the log also holds the health checks made
    while starting, so only the line with this trace id will do.
    """

    def find() -> dict[str, str] | None:
        for line in front.access_log.read_text().splitlines():
            match = ACCESS_LINE.match(line)
            if match and match["trace_id"] == trace_id:
                return match.groupdict()
        return None

    return wait_until(find, timeout=5, what=f"Apache access log line of trace {trace_id}")


@contextlib.contextmanager
def replicas(tmp_path: Path, count: int, env: dict[str, str]) -> Iterator[list[Gunicorn]]:
    scripts = make_scripts(tmp_path / "scripts")
    with contextlib.ExitStack() as stack:
        servers = []
        for i in range(1, count + 1):
            home = tmp_path / f"replica-{i}"
            home.mkdir()
            servers.append(stack.enter_context(gunicorn(scripts, home, workers=2, env=env)))
        yield servers


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Gunicorn]]]:
    tmp_path = tmp_path_factory.mktemp("apache-front")
    env = {
        "TRUSTED_PROXIES": PROXY,
        "API_KEY": "k",
        "SCRIPT_TIMEOUT": str(SCRIPT_TIMEOUT),
        "MAX_SCRIPT_TIMEOUT": str(MAX_SCRIPT_TIMEOUT),
    }
    with replicas(tmp_path, 2, env) as servers:
        backends = [f"127.0.0.1:{s.port}" for s in servers]
        with apache.apache_front(backends, tmp_path, MAX_SCRIPT_TIMEOUT) as url:
            yield url, servers


def test_request_passes_through_with_trace_id_and_real_client_ip(front) -> None:
    url, servers = front
    reply = call(url, "/hello.py?name=Rico", headers={"X-Forwarded-For": "10.1.2.3"})
    assert reply.status == 200
    assert reply.json() == {"message": "Hello, Rico!"}
    trace_id = reply.headers["X-Trace-Id"]
    assert TRACE_ID.match(trace_id)
    assert reply.headers["traceresponse"].split("-")[1] == trace_id
    record = request_record(trace_id, *servers)
    # Apache appended the real peer; the platform took it, not the forged left part.
    assert record["client_ip"] == CLIENT
    assert record["status"] == 200
    # Apache's own line for this request leads to the same trace, with the real peer.
    logged = access_record(url, trace_id)
    assert logged["client"] == CLIENT
    assert logged["request"] == "GET /hello.py?name=Rico HTTP/1.1"
    assert logged["status"] == "200"
    assert logged["backend"] in {f"http://127.0.0.1:{s.port}" for s in servers}


def test_script_sees_the_real_client_and_not_the_forged_address(front) -> None:
    url, _ = front
    reply = call(url, "/whoami.py", headers={"X-Forwarded-For": "10.1.2.3"})
    assert reply.status == 200
    # Only what Apache wrote: the forged hop is in neither view of the request.
    assert reply.json() == {"remote_addr": CLIENT, "access_route": [CLIENT]}


def test_plain_http_through_apache_is_http_whatever_the_client_claims(front) -> None:
    url, servers = front
    reply = call(url, "/scheme.py", headers={"X-Forwarded-Proto": "https"})
    assert reply.json() == {"scheme": "http", "url_root": f"{url}/", "forwarded_proto": "http"}
    # Straight to a replica, the claim is not believed: 127.0.0.2 is no trusted proxy.
    direct = call(servers[0].url, "/scheme.py", headers={"X-Forwarded-Proto": "https"})
    assert direct.json() == {
        "scheme": "http",
        "url_root": f"{servers[0].url}/",
        "forwarded_proto": None,
    }


def test_client_on_the_proxy_address_is_logged_as_itself(front) -> None:
    url, servers = front
    reply = call(url, "/hello.py", source=PROXY)
    assert reply.status == 200
    assert request_record(reply.headers["X-Trace-Id"], *servers)["client_ip"] == PROXY


def test_error_bodies_and_their_trace_id_reach_the_client(front) -> None:
    url, _ = front
    for path, status in (("/nope.py", 404), ("/boom.py", 500), ("/api/hello.py", 401)):
        reply = call(url, path)
        assert reply.status == status, path
        assert reply.json()["trace_id"] == reply.headers["X-Trace-Id"], path


def test_requests_are_spread_over_both_replicas(front) -> None:
    url, servers = front
    trace_ids = [call(url, "/hello.py").headers["X-Trace-Id"] for _ in range(10)]
    for trace_id in trace_ids:
        request_record(trace_id, *servers)
    for server in servers:
        mine = {r["trace_id"] for r in log_records(server) if r.get("message") == "request"}
        assert mine & set(trace_ids), f"replica on port {server.port} got none of 10 requests"


def test_forged_forwarded_for_does_not_pass_the_allowlist(tmp_path: Path) -> None:
    # The allowlist admits the address the client pretends to be, and 127.0.0.3. It also
    # admits the proxy's own 127.0.0.1 (tests.servers polls /_platform/health from there),
    # so a platform that ignored X-Forwarded-For would let the forged call through too.
    allow = "10.1.2.3,127.0.0.3,127.0.0.1"
    env = {"TRUSTED_PROXIES": PROXY, "API_TRUSTED_IPS": allow, "API_KEY": "k"}
    with (
        replicas(tmp_path, 1, env) as servers,
        apache.apache_front([f"127.0.0.1:{servers[0].port}"], tmp_path) as url,
    ):
        forged = call(url, "/hello.py", headers={"X-Forwarded-For": "10.1.2.3"})
        assert forged.status == 403
        assert forged.json()["reason"] == "ip"
        record = request_record(forged.headers["X-Trace-Id"], *servers)
        assert record["client_ip"] == CLIENT
        # Control: an allowed address, connecting for real, gets through the proxy.
        allowed = call(url, "/hello.py", source="127.0.0.3")
        assert allowed.status == 200


@pytest.mark.parametrize(
    ("path", "deadline"),
    [
        ("/sleep.py", SCRIPT_TIMEOUT),  # no TIMEOUT of its own
        ("/slow.py", MAX_SCRIPT_TIMEOUT),  # asks for TIMEOUT = 10, gets the longest allowed
    ],
)
def test_script_past_its_deadline_gets_the_platforms_504_through_apache(
    front, path: str, deadline: int
) -> None:
    """The platform answers first, with its JSON body and trace id, not Apache's HTML."""
    url, servers = front
    started = time.monotonic()
    reply = call(url, path)
    elapsed = time.monotonic() - started
    assert reply.status == 504
    assert reply.headers["Content-Type"] == "application/json"
    trace_id = reply.headers["X-Trace-Id"]
    assert reply.json() == {"error": "timeout", "trace_id": trace_id}
    assert deadline <= elapsed < apache.proxy_timeout(MAX_SCRIPT_TIMEOUT)
    assert request_record(trace_id, *servers)["status"] == 504
    assert access_record(url, trace_id)["status"] == "504"


def test_vhost_leaves_the_trace_headers_alone() -> None:
    """No `Header unset` may drop X-Trace-Id or traceresponse on the way out."""
    text = apache.VHOST.read_text()
    directives = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in directives if "unset" in line.lower()]

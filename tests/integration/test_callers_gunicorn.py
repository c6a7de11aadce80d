"""Named keys under real gunicorn with three workers, and a real redis-server.

Hot reload and revocation reach every worker on its next call, a rate limit is exact
across the workers of one server (SQLite) and across two servers (Redis), the audit
trail names the caller in the log, the span and the metrics, and no script can read a
platform key from its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import redis_server
from tests.integration.prom import call, scrape, series
from tests.integration.test_core_otlp import Receiver
from tests.keyfile import entry
from tests.servers import WORKER_PID, Gunicorn, gunicorn, request_record, wait_until

ALPHA = "sg_alpha_0123456789abcdefghijklmnopqrstuvwxyzABCD"
BETA = "sg_beta_0123456789abcdefghijklmnopqrstuvwxyzABCDE"
LIMITED = "sg_limited_0123456789abcdefghijklmnopqrstuvwxyzAB"
API_KEY = "env-api-key-a7c1f09e"
ADMIN_KEY = "env-admin-key-52bd7e11"
PID_SCRIPT = f"import os\ndef main(request):\n    return {{'pid': {WORKER_PID}}}\n"
ENV_DUMP = """
import os

def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except OSError as exc:
        return repr(exc)

def main(request):
    fds = {}
    for fd in os.listdir("/proc/self/fd"):  # every open file (not pipes nor sockets)
        path = f"/proc/self/fd/{fd}"
        fds[fd] = read(path)[:100000] if os.path.isfile(path) else ""
    return {
        "environ": dict(os.environ),
        "proc_environ": read("/proc/self/environ"),
        "master_environ": read(f"/proc/{os.getppid()}/environ"),
        "cmdline": read("/proc/self/cmdline"),
        "fds": fds,
        "headers": dict(request.headers),
        "wsgi": {k: str(v) for k, v in request.environ.items()},
    }
"""


def replace(path: Path, text: str) -> None:
    """Write atomically, as an editor or a deploy tool does."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    root = tmp_path / "scripts"
    (root / "api").mkdir(parents=True)
    (root / "api" / "pid.py").write_text(PID_SCRIPT)
    (root / "envdump.py").write_text(textwrap.dedent(ENV_DUMP))
    (root / "api" / "envdump.py").write_text(textwrap.dedent(ENV_DUMP))
    return root


def concurrently(n: int, task: Callable[[int], tuple[int, object]]) -> list[tuple[int, object]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(task, range(n)))


def pids_with(server: Gunicorn, secret: str, want: int, rounds: int = 10) -> set[int]:
    """Batches of concurrent calls with one key until `want` workers answered (bounded)."""
    seen: set[int] = set()
    for _ in range(rounds):
        replies = concurrently(30, lambda _: call(server, "/api/pid.py", {"X-API-Key": secret}))
        assert {status for status, _ in replies} == {200}
        seen |= {body["pid"] for _, body in replies}
        if len(seen) >= want:
            break
    return seen


def test_keys_file_edits_reach_every_worker_on_the_next_call(scripts, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry("alpha", ALPHA))
    with gunicorn(scripts, tmp_path, workers=3, env={"KEYS_FILE": str(keys)}) as server:
        workers = server.worker_pids()
        assert pids_with(server, ALPHA, 3) == workers  # every worker knows alpha
        assert call(server, "/api/pid.py", {"X-API-Key": BETA})[0] == 401

        replace(keys, entry("alpha", ALPHA) + entry("beta", BETA))  # a new key
        assert pids_with(server, BETA, 3) == workers  # ... works at once in every worker

        replace(keys, entry("beta", BETA))  # alpha revoked

        def mixed(i: int) -> tuple[int, object]:
            secret = ALPHA if i % 2 else BETA
            return call(server, "/api/pid.py", {"X-API-Key": secret})

        replies = concurrently(120, mixed)
        revoked = [status for i, (status, _) in enumerate(replies) if i % 2]
        served = {body["pid"] for i, (_, body) in enumerate(replies) if not i % 2}
        assert revoked == [401] * 60  # not one call with alpha got through ...
        assert served == workers  # ... while every worker was answering calls
        assert server.worker_pids() == workers  # no restart was needed


def test_rate_limit_is_exact_across_three_workers(scripts, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry("busy", LIMITED, extra='rate_limit = "25/hour"'))
    with gunicorn(scripts, tmp_path, workers=3, env={"KEYS_FILE": str(keys)}) as server:
        headers = {"X-API-Key": LIMITED}
        replies = concurrently(90, lambda _: call(server, "/api/pid.py", headers))
        statuses = [status for status, _ in replies]
        assert statuses.count(200) == 25 and statuses.count(429) == 65
        assert len({body["pid"] for status, body in replies if status == 200}) >= 2
        refused = next(body for status, body in replies if status == 429)
        assert refused["reason"] == "rate_limit"
        over = server.get("/api/pid.py", headers=headers)
        assert over.status_code == 429
        assert 3000 <= int(over.headers["Retry-After"]) <= 3600  # the window is an hour
        families = scrape(server)
        rejected = series(families, "scriptgate_requests_rejected_total")
        assert sum(v for k, v in rejected.items() if ("reason", "rate_limit") in k) == 66
        refusals = series(families, "scriptgate_caller_refusals_total")
        assert refusals == {
            frozenset({("zone", "api"), ("caller", "busy"), ("reason", "rate_limit")}): 66
        }


def test_caller_is_in_the_log_the_span_and_the_metrics(scripts, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry("alpha", ALPHA))
    receiver = Receiver()
    receiver.thread.start()
    env = {
        "KEYS_FILE": str(keys),
        "API_KEY": API_KEY,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    try:
        with gunicorn(scripts, tmp_path, workers=3, env=env) as server:
            replies = [server.get("/api/pid.py", headers={"X-API-Key": ALPHA}) for _ in range(9)]
            replies.append(server.get("/api/pid.py", headers={"X-API-Key": API_KEY}))
            trace_id = replies[0].headers["X-Trace-Id"]
            assert request_record(trace_id, server)["caller"] == "alpha"
            last = request_record(replies[-1].headers["X-Trace-Id"], server)
            assert last["caller"] == "api-key-1"
            spans = wait_until(
                lambda: [s for s in receiver.for_trace(trace_id) if s["kind"] == 2],
                timeout=20,
                what="the server span at the OTLP receiver",
            )
            assert spans[0]["attributes"]["enduser.id"] == "alpha"
            calls = series(scrape(server), "scriptgate_caller_requests_total")
            by_caller = {dict(k)["caller"]: v for k, v in calls.items() if ("zone", "api") in k}
            assert by_caller == {"alpha": 9, "api-key-1": 1}  # summed over the workers
            log = server.log_file.read_text()
            assert ALPHA not in log and API_KEY not in log
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_no_script_can_read_a_platform_key(scripts, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry("alpha", ALPHA))
    env = {
        "KEYS_FILE": str(keys),
        "API_KEY": API_KEY,
        "ADMIN_API_KEY": ADMIN_KEY,
        "REDIS_URL": f"redis://:{redis_server.PASSWORD}@127.0.0.1:1/0",
    }
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        dumps = [
            server.get("/envdump.py").text,
            server.get("/api/envdump.py", headers={"X-API-Key": API_KEY}).text,
            server.get("/api/envdump.py", headers={"X-API-Key": ALPHA}).text,
        ]
        with open(f"/proc/{server.proc.pid}/environ", "rb") as master:
            dumps.append(master.read().decode("latin-1"))
        runner_environ = json.loads(dumps[1])["environ"]
        assert "PATH" in runner_environ  # the dump works
        assert "KEYS_FILE" not in runner_environ  # a runner gets no platform setting at all
        material = [API_KEY, ADMIN_KEY, ALPHA, redis_server.PASSWORD]
        material += [hashlib.sha256(k.encode()).hexdigest() for k in (API_KEY, ADMIN_KEY)]
        for dump in dumps:
            for secret in material:
                assert secret not in dump
        assert server.get("/api/pid.py", headers={"X-API-Key": API_KEY}).status_code == 200


@pytest.mark.skipif(not redis_server.available(), reason="redis-server not installed")
def test_rate_limit_and_last_use_are_shared_by_two_servers_through_redis(scripts, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry("busy", LIMITED, extra='rate_limit = "30/hour"'))
    with redis_server.redis_server(tmp_path) as url:
        env = {"KEYS_FILE": str(keys), "REDIS_URL": url, "ADMIN_API_KEY": ADMIN_KEY}
        one_home, two_home = tmp_path / "one", tmp_path / "two"
        one_home.mkdir()
        two_home.mkdir()
        with (
            gunicorn(scripts, one_home, workers=2, env=env) as one,
            gunicorn(scripts, two_home, workers=2, env=env) as two,
        ):
            servers = (one, two)
            headers = {"X-API-Key": LIMITED}
            replies = concurrently(80, lambda i: call(servers[i % 2], "/api/pid.py", headers))
            statuses = [status for status, _ in replies]
            assert statuses.count(200) == 30 and statuses.count(429) == 50
            ok_on = [i % 2 for i, status in enumerate(statuses) if status == 200]
            assert set(ok_on) == {0, 1}  # both servers served some of the 30
            # Last use, written by whichever server answered, is seen by both.
            admin = {"X-Admin-Key": ADMIN_KEY}
            for server in servers:
                listing = server.get("/_platform/keys", headers=admin).json()["keys"]
                busy = next(k for k in listing if k["id"] == "busy")
                assert busy["last_used"] is not None and busy["rate_limit"] == "30/hour"
    # Redis gone: a limited key is refused (503), never let through unlimited.
    with gunicorn(scripts, tmp_path / "one", workers=2, env=env) as alone:
        refused = alone.get("/api/pid.py", headers={"X-API-Key": LIMITED})
        assert refused.status_code == 503
        assert refused.json()["reason"] == "rate_limit_store"
        record = request_record(refused.headers["X-Trace-Id"], alone)
        assert record["caller"] == "busy"
        log = alone.log_file.read_text()
        assert "rate limit store failed" in log and redis_server.PASSWORD not in log

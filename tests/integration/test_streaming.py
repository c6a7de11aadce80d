"""Streamed answers on real gunicorn and real runners: a script that returns a generator
(or a streaming Response, or Server-Sent Events) reaches its caller chunk by chunk as it
makes them; its TIMEOUT covers the whole stream (cut at the deadline, the runner killed,
a timeout in the log and the error counter); the request's log line and duration
histogram are written when the stream ends; a caller who hangs up stops the script."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import requests

from tests.integration.test_core_otlp import Receiver
from tests.servers import Gunicorn, gunicorn, log_records, request_record, wait_until

KEY = "stream-key-0123456789abcdef"
SCRIPTS = {
    "gated.py": '''"""A first chunk, then the rest once the test's gate file exists."""
import os, time
def main(request):
    gate = request.args["gate"]
    def chunks():
        yield "first\\n"
        deadline = time.monotonic() + 20
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        for n in range(3):
            yield f"line {n}\\n"
    return chunks()
''',
    "events.py": '''"""Server-Sent Events from a streaming Response."""
import time
from flask import Response
def main(request):
    def events():
        for n in range(3):
            yield f"id: {n}\\ndata: tick {n}\\n\\n"
            time.sleep(0.3)
    return Response(events(), mimetype="text/event-stream", headers={"X-Mine": "yes"})
''',
    "endless.py": '''"""Five steps of a second each, under a 2 s TIMEOUT; writes its pid first."""
import os, time
TIMEOUT = 2
def main(request):
    with open(request.args["pid"], "w") as f:
        f.write(str(os.getpid()))
    def steps():
        for n in range(5):
            yield f"step {n}\\n".encode()
            time.sleep(1)
    return steps()
''',
    "forever.py": '''"""A chunk every 50 ms for a minute; writes its pid first."""
import os, time
TIMEOUT = 120
def main(request):
    with open(request.args["pid"], "w") as f:
        f.write(str(os.getpid()))
    def ticks():
        for n in range(1200):
            yield f"tick {n}\\n"
            time.sleep(0.05)
    return ticks()
''',
    "breaks.py": '''"""Raises after two chunks."""
def main(request):
    def chunks():
        yield "one\\n"
        yield "two\\n"
        raise RuntimeError("broke at three: secret-ish detail")
    return chunks()
''',
}


def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    scripts = tmp_path / "scripts"
    (scripts / "api").mkdir(parents=True)
    for name, source in SCRIPTS.items():
        (scripts / "api" / name).write_text(source)
    return scripts, {"API_KEY": KEY, "JOB_WORKERS": "1"}


def get(server: Gunicorn, script: str, **params: str) -> requests.Response:
    return requests.get(
        f"{server.url}/api/{script}",
        headers={"X-API-Key": KEY},
        params=params,
        stream=True,
        timeout=(5, 15),
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def metric(server: Gunicorn, pattern: str) -> float:
    text = server.get("/_platform/metrics", headers={"X-API-Key": KEY}).text
    found = re.search(pattern + r" ([0-9.e+]+)", text)
    return float(found.group(1)) if found else 0.0


def test_chunks_reach_the_caller_as_the_script_makes_them(tmp_path):
    scripts, env = setup(tmp_path)
    gate = tmp_path / "gate"
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        response = get(server, "gated.py", gate=str(gate))
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        chunks = response.iter_content(chunk_size=None, decode_unicode=True)
        assert next(chunks) == "first\n"  # while the script still waits for the gate
        gate.touch()
        assert "".join(chunks) == "line 0\nline 1\nline 2\n"
        record = request_record(response.headers["X-Trace-Id"], server)
        assert record["status"] == 200 and record["script"] == "gated.py"


def test_server_sent_events_stream_and_the_log_line_covers_the_whole_stream(tmp_path):
    scripts, env = setup(tmp_path)
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        before = metric(
            server, r'scriptgate_request_duration_seconds_sum\{[^}]*script="events.py"[^}]*\}'
        )
        response = get(server, "events.py")
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Mine"] == "yes"
        body = response.content.decode()
        assert body == "".join(f"id: {n}\ndata: tick {n}\n\n" for n in range(3))
        record = request_record(response.headers["X-Trace-Id"], server)
        assert record["duration_ms"] >= 850  # three chunks 0.3 s apart: the whole stream
        after = metric(
            server, r'scriptgate_request_duration_seconds_sum\{[^}]*script="events.py"[^}]*\}'
        )
        assert after - before >= 0.85


def test_timeout_covers_the_whole_stream_cuts_it_and_kills_the_runner(tmp_path):
    scripts, env = setup(tmp_path)
    pid_file = tmp_path / "endless.pid"
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        response = get(server, "endless.py", pid=str(pid_file))
        chunks = response.iter_content(chunk_size=None, decode_unicode=True)
        body = next(chunks)  # the call has started (a cold runner's start came before)
        began = time.monotonic()
        body += "".join(chunks)
        took = time.monotonic() - began
        # Cut at TIMEOUT = 2 s from the call's start; the 5 steps would take 4 s more.
        assert 1.0 <= took < 3.5, took
        assert body.startswith("step 0\n") and "step 4" not in body
        pid = int(pid_file.read_text())
        wait_until(lambda: not alive(pid), timeout=10, what="the stream's runner to be killed")
        trace_id = response.headers["X-Trace-Id"]
        record = request_record(trace_id, server)
        assert record["duration_ms"] >= 1800
        failures = [
            r
            for r in log_records(server)
            if r.get("trace_id") == trace_id and r.get("level") == "ERROR"
        ]
        assert failures and "timeout" in str(failures[0]).lower()
        assert (
            metric(
                server,
                r'scriptgate_script_errors_total\{[^}]*kind="timeout"[^}]*script="endless.py"[^}]*\}',
            )
            + metric(
                server,
                r'scriptgate_script_errors_total\{[^}]*script="endless.py"[^}]*kind="timeout"[^}]*\}',
            )
            >= 1
        )
        again = get(server, "gated.py", gate=str(tmp_path))  # the gate exists: it ends
        assert again.status_code == 200 and again.content.startswith(b"first\n")


def test_a_caller_who_hangs_up_stops_the_script(tmp_path):
    scripts, env = setup(tmp_path)
    pid_file = tmp_path / "forever.pid"
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        response = get(server, "forever.py", pid=str(pid_file))
        chunks = response.iter_content(chunk_size=None, decode_unicode=True)
        assert next(chunks).startswith("tick 0")
        pid = int(pid_file.read_text())
        assert alive(pid)
        response.close()  # the caller goes away mid-stream
        wait_until(lambda: not alive(pid), timeout=10, what="the runner of a stream no one reads")
        record = request_record(response.headers["X-Trace-Id"], server)
        assert record["status"] == 200 and record["duration_ms"] < 60_000


def test_a_generator_that_raises_ends_the_stream_and_is_logged_not_shown(tmp_path):
    scripts, env = setup(tmp_path)
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        response = get(server, "breaks.py")
        body = response.content.decode()
        assert body == "one\ntwo\n"  # what it made before it raised; no traceback
        trace_id = response.headers["X-Trace-Id"]
        request_record(trace_id, server)
        errors = [
            r
            for r in log_records(server)
            if r.get("trace_id") == trace_id and r.get("level") == "ERROR"
        ]
        assert errors and "broke at three" in str(errors[0])


def test_a_streamed_answer_is_a_jobs_whole_result(tmp_path):
    scripts, env = setup(tmp_path)
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        headers = {"X-API-Key": KEY, "Prefer": "respond-async"}
        started = server.get("/api/events.py", headers=headers)
        assert started.status_code == 202
        url = started.json()["status_url"]
        wait_until(
            lambda: server.get(url, headers={"X-API-Key": KEY}).json()["state"] == "succeeded",
            timeout=30,
            what="the streaming job to succeed",
        )
        result = server.get(url + "/result", headers={"X-API-Key": KEY})
        assert result.text == "".join(f"id: {n}\ndata: tick {n}\n\n" for n in range(3))


def test_the_server_span_and_the_scripts_span_end_with_the_stream(tmp_path):
    scripts, env = setup(tmp_path)
    receiver = Receiver()
    receiver.thread.start()
    env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
            streamed = get(server, "events.py")
            assert streamed.content.count(b"data: tick") == 3
            head = requests.head(
                f"{server.url}/api/events.py", headers={"X-API-Key": KEY}, timeout=15
            )
            assert head.status_code == 200 and head.content == b""
            request_record(head.headers["X-Trace-Id"], server)  # a HEAD's line is written too

            def spans(trace_id: str) -> dict | None:
                found = {s["name"]: s for s in receiver.for_trace(trace_id)}
                return found if "script.run" in found and len(found) >= 2 else None

            found = wait_until(
                lambda: spans(streamed.headers["X-Trace-Id"]), timeout=20, what="the spans"
            )
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    server_span = next(s for s in found.values() if s["kind"] == 2)
    assert found["script.run"]["seconds"] >= 0.85  # three chunks 0.3 s apart
    assert server_span["end"] >= found["script.run"]["end"]  # not when the view returned

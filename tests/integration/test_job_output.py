"""A job's own output, live, on real gunicorn with its job workers and real runners (SQLite,
and a real redis-server): /_platform/jobs/<id>/logs has the run's print, logging and
stderr lines; /events streams state, progress and log events as they happen, ends with
the final state, and Last-Event-ID resumes with nothing lost or repeated; progress() is
on the record; only whoever may see the job may follow it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from tests.keyfile import api_scripts_and_keys
from tests.servers import Gunicorn, gunicorn, log_records, request_record, wait_until

ALPHA = "sg_alpha_follow_0123456789abcdefghijklmnopqr"
BETA = "sg_beta_follow_0123456789abcdefghijklmnopqrs"
AUDITOR = "sg_auditor_follow_0123456789abcdefghijklmno"
SCRIPTS = {
    "report.py": '''"""Prints, logs and reports progress, then waits for the test's gate file."""
import logging, os, sys, time
from scriptgate import progress
def main(request):
    gate = request.args.get("gate", "")
    print("starting")
    progress(0.25, "a quarter")
    logging.getLogger(__name__).warning("half way: %s", "ok")
    sys.stderr.write("to stderr\\n")
    deadline = time.monotonic() + 30
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    progress(1, "done")
    print("finished")
    return {"ok": True}
''',
    "chatty.py": '''"""Prints 50 numbered lines of 20 characters."""
def main(request):
    for n in range(50):
        print(f"line {n:05d} .........")
    return "ok"
''',
    "bad_progress.py": '''"""A progress fraction out of range: the script's own error."""
from scriptgate import progress
def main(request):
    progress(1.5, "too far")
''',
    "secretive.py": '''"""Reads a secret through the script authors' package."""
from scriptgate import secret
def main(request):
    return {"length": len(secret("token"))}
''',
    "hostile.py": '''"""Goes round the helper's checks: the worker must not store what it sends."""
from flask import current_app
from scriptgate import progress
def main(request):
    progress(0.5, "fine")
    report = current_app.extensions["scriptgate"].progress
    report(float("nan"), "not a number")
    report(7, "too far")
    report("0.9", 12345)
    report(True, "a boolean")
    return "done"
''',
}


def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    keys = {"alpha": (ALPHA, '["api:*"]'), "beta": (BETA, '["api:*"]')}
    keys["auditor"] = (AUDITOR, '["platform:jobs"]')
    return api_scripts_and_keys(tmp_path, SCRIPTS, keys)


def start(server: Gunicorn, script: str, **params: str) -> str:
    headers = {"X-API-Key": ALPHA, "Prefer": "respond-async"}
    response = server.get(f"/api/{script}", headers=headers, params=params)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job(server: Gunicorn, job_id: str) -> dict:
    response = server.get(f"/_platform/jobs/{job_id}", headers={"X-API-Key": ALPHA})
    assert response.status_code == 200, response.text
    return response.json()


def finished(server: Gunicorn, job_id: str) -> dict:
    return wait_until(
        lambda: (found := job(server, job_id))["state"] not in ("queued", "running") and found,
        timeout=30,
        what=f"job {job_id} to finish",
    )


class Stream:
    """An SSE response read event by event (each with a bounded wait)."""

    def __init__(self, server: Gunicorn, job_id: str, last: int | None = None) -> None:
        headers = {"X-API-Key": ALPHA}
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        self.response = requests.get(
            f"{server.url}/_platform/jobs/{job_id}/events",
            headers=headers,
            stream=True,
            timeout=(5, 10),
        )
        self.chunks = self.response.iter_content(chunk_size=None, decode_unicode=True)
        self.buffer = ""
        self.comments: list[str] = []
        self.retry: int | None = None

    def next(self) -> dict | None:
        """The next event ({"id", "event", "data"}), or None when the stream ended."""
        while "\n\n" not in self.buffer:
            try:
                self.buffer += next(self.chunks)
            except StopIteration:
                return None
        block, self.buffer = self.buffer.split("\n\n", 1)
        event: dict = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                self.comments.append(value)
            elif name == "retry":
                self.retry = int(value)
            elif name == "id":
                event["id"] = int(value)
            elif name == "event":
                event["event"] = value
            elif name == "data":
                event["data"] = json.loads(value)
        return event if event else self.next()

    def until(self, match, limit: int = 200) -> list[dict]:
        """Events up to and including the first that matches (at most `limit`)."""
        seen = []
        for _ in range(limit):
            event = self.next()
            assert event is not None, f"the stream ended before a match: {seen}"
            seen.append(event)
            if match(event):
                return seen
        raise AssertionError(f"no match in {limit} events: {seen}")

    def rest(self, limit: int = 500) -> list[dict]:
        seen = []
        for _ in range(limit):
            event = self.next()
            if event is None:
                return seen
            seen.append(event)
        raise AssertionError("the stream did not end")

    def close(self) -> None:
        self.response.close()


def is_final(event: dict) -> bool:
    return event.get("event") == "state" and event["data"]["state"] not in ("queued", "running")


def test_follow_a_job_live_then_resume_from_any_event_without_loss_or_repeats(tmp_path, store_env):
    scripts, env = setup(tmp_path)
    gate = tmp_path / "gate"
    with gunicorn(scripts, tmp_path, workers=2, env={**env, **store_env}) as server:
        job_id = start(server, "report.py", gate=str(gate))
        stream = Stream(server, job_id)
        assert stream.response.status_code == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        # Live: the lines and the progress come while the script still waits for the gate.
        before = stream.until(
            lambda e: e.get("event") == "log" and "stderr" in e["data"]["message"]
        )
        assert job(server, job_id)["state"] == "running"
        assert job(server, job_id)["progress"] == {"fraction": 0.25, "message": "a quarter"}
        logs = server.get(f"/_platform/jobs/{job_id}/logs", headers={"X-API-Key": ALPHA}).json()
        assert [line["message"] for line in logs["lines"]] == [
            "starting",
            "half way: ok",
            "to stderr",
        ]
        assert logs["state"] == "running"
        gate.touch()
        after = stream.until(is_final)
        assert stream.rest() == []  # the final state ends the stream
        stream.close()
        assert stream.retry is not None
        events = before + after
        ids = [e["id"] for e in events]
        assert ids == list(range(1, len(ids) + 1))  # numbered, none missing
        states = [e["data"]["state"] for e in events if e["event"] == "state"]
        assert states == ["queued", "running", "succeeded"]
        assert events[-1]["data"]["status"] == 200
        progress = [e["data"] for e in events if e["event"] == "progress"]
        assert progress == [
            {"fraction": 0.25, "message": "a quarter"},
            {"fraction": 1.0, "message": "done"},
        ]
        lines = [e["data"] for e in events if e["event"] == "log"]
        assert [(line["message"], line["level"]) for line in lines] == [
            ("starting", "INFO"),
            ("half way: ok", "WARNING"),
            ("to stderr", "WARNING"),
            ("finished", "INFO"),
        ]
        assert lines[0]["stream"] == "stdout" and lines[1]["logger"].endswith("report")
        assert job(server, job_id)["progress"] == {"fraction": 1.0, "message": "done"}
        # Resume from every event: exactly the ones after it, then the end.
        for last in range(1, len(events)):
            resumed = Stream(server, job_id, last=last)
            assert resumed.rest() == events[last:], last
            resumed.close()
        past = requests.get(
            f"{server.url}/_platform/jobs/{job_id}/events",
            headers={"X-API-Key": ALPHA, "Last-Event-ID": str(len(events))},
            timeout=10,
        )
        assert past.status_code == 204  # after the final state: EventSource stops there
        # Each of the job's own lines in the app log carries the job's id.
        records = [r for r in log_records(server) if r.get("job_id") == job_id]
        printed = [
            r for r in records if r["logger"] == "print" or "scriptgate_script" in r["logger"]
        ]
        assert {r["message"] for r in printed} >= {"starting", "half way: ok", "finished"}
        own = [r for r in log_records(server) if r.get("message") in ("starting", "finished")]
        assert own and all(r.get("job_id") == job_id for r in own)


def test_a_stream_lives_its_bounded_time_and_the_client_resumes_after_it(tmp_path, store_env):
    scripts, env = setup(tmp_path)
    gate = tmp_path / "gate"
    env = {**env, **store_env, "JOB_EVENTS_SECONDS": "1"}
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        job_id = start(server, "report.py", gate=str(gate))
        first = Stream(server, job_id)
        began = time.monotonic()
        seen = first.rest()  # ends at JOB_EVENTS_SECONDS, the job still waiting
        assert time.monotonic() - began < 8
        assert any("Last-Event-ID" in comment for comment in first.comments)
        # Its request log line is the whole stream's, written when it ended.
        record = request_record(first.response.headers["X-Trace-Id"], server)
        assert record["path"].endswith("/events") and record["duration_ms"] >= 900
        assert not any(is_final(e) for e in seen) and seen
        assert job(server, job_id)["state"] == "running"
        gate.touch()
        rest: list[dict] = []
        for _ in range(20):  # each stream at most a second; the job ends well within
            stream = Stream(server, job_id, last=(rest or seen)[-1]["id"])
            if stream.response.status_code == 204:
                break
            rest += stream.rest()
            stream.close()
            if rest and is_final(rest[-1]):
                break
        events = seen + rest
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert is_final(events[-1]) and events[-1]["data"]["state"] == "succeeded"


def test_only_who_may_see_the_job_follows_it_and_bad_input_is_a_clear_400(tmp_path):
    scripts, env = setup(tmp_path)
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        job_id = start(server, "chatty.py")
        finished(server, job_id)
        for suffix in ("logs", "events"):
            path = f"/_platform/jobs/{job_id}/{suffix}"
            assert server.get(path, headers={"X-API-Key": BETA}).status_code == 404
            assert server.get(path).status_code in (401, 404)
            assert server.get(path, headers={"X-Admin-Key": AUDITOR}).status_code == 200
            unknown = server.get(
                f"/_platform/jobs/{'A' * 32}/{suffix}", headers={"X-API-Key": ALPHA}
            )
            assert unknown.status_code == 404
        bad = server.get(
            f"/_platform/jobs/{job_id}/events",
            headers={"X-API-Key": ALPHA, "Last-Event-ID": "seven"},
        )
        assert bad.status_code == 400 and bad.json()["header"] == "Last-Event-ID"
        for params in ({"after": "-1"}, {"after": "x"}, {"colour": "red"}):
            answer = server.get(
                f"/_platform/jobs/{job_id}/logs", headers={"X-API-Key": ALPHA}, params=params
            )
            assert answer.status_code == 400, params
            assert answer.json()["fields"][0]["name"] == next(iter(params))
        # Paging with `next`: the later lines only.
        logs = server.get(f"/_platform/jobs/{job_id}/logs", headers={"X-API-Key": ALPHA}).json()
        assert len(logs["lines"]) == 50 and not logs["more"]
        middle = logs["lines"][24]["id"]
        later = server.get(
            f"/_platform/jobs/{job_id}/logs",
            headers={"X-API-Key": ALPHA},
            params={"after": str(middle)},
        ).json()
        assert [line["message"] for line in later["lines"]] == [
            line["message"] for line in logs["lines"][25:]
        ]


def test_a_runs_log_is_cut_at_job_log_limit_and_the_app_log_keeps_every_line(tmp_path, store_env):
    scripts, env = setup(tmp_path)
    with gunicorn(
        scripts, tmp_path, workers=1, env={**env, **store_env, "JOB_LOG_LIMIT": "200"}
    ) as server:
        job_id = start(server, "chatty.py")
        assert finished(server, job_id)["state"] == "succeeded"
        lines = server.get(f"/_platform/jobs/{job_id}/logs", headers={"X-API-Key": ALPHA}).json()[
            "lines"
        ]
        kept = [line["message"] for line in lines if line.get("stream") == "stdout"]
        assert kept == [f"line {n:05d} ........." for n in range(10)]  # 10 x 20 bytes
        assert "JOB_LOG_LIMIT" in lines[-1]["message"] and len(lines) == 11
        records = log_records(server)
        printed = [r for r in records if r.get("logger") == "print" and r.get("job_id") == job_id]
        assert len(printed) == 50


def test_progress_is_checked_where_the_script_calls_it_and_is_harmless_outside_a_job(
    tmp_path,
):
    scripts, env = setup(tmp_path)
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        # A synchronous call: progress() does nothing, the call answers as usual.
        call = server.get("/api/report.py", headers={"X-API-Key": ALPHA}, timeout=30)
        assert call.status_code == 200 and call.json() == {"ok": True}
        bad = start(server, "bad_progress.py")
        assert finished(server, bad)["state"] == "failed"
        failure = [
            r
            for r in log_records(server)
            if r.get("job_id") == bad and "progress fraction" in json.dumps(r)
        ]
        assert failure, "the script's error names the bad fraction"
        # A hostile script that skips the helper's checks: nothing invalid is stored.
        hostile = start(server, "hostile.py")
        record = finished(server, hostile)
        assert record["state"] == "succeeded"
        assert record["progress"] == {"fraction": 0.5, "message": "fine"}
        events = Stream(server, hostile).rest()
        assert [e["data"] for e in events if e["event"] == "progress"] == [
            {"fraction": 0.5, "message": "fine"}
        ]


def metric(server: Gunicorn, name: str) -> float:
    """The sum of a metric's samples (every label set) in the server's exposition."""
    text = server.get("/_platform/metrics", headers={"X-Admin-Key": AUDITOR}).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_operators_see_runs_by_attempt_and_open_event_streams_and_secret_reads_work(tmp_path):
    scripts, env = setup(tmp_path)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("s3cr3t-value\n")
    gate = tmp_path / "gate"
    with gunicorn(scripts, tmp_path, workers=2, env={**env, "SECRETS_DIR": str(secrets)}) as server:
        done = start(server, "secretive.py")
        assert finished(server, done)["state"] == "succeeded"
        result = server.get(f"/_platform/jobs/{done}/result", headers={"X-API-Key": ALPHA})
        assert result.json() == {"length": len("s3cr3t-value")}
        assert metric(server, "scriptgate_job_attempts_total") >= 1
        assert metric(server, "scriptgate_job_event_streams") == 0
        running = start(server, "report.py", gate=str(gate))
        stream = Stream(server, running)
        stream.until(lambda e: e.get("event") == "log")
        wait_until(
            lambda: metric(server, "scriptgate_job_event_streams") == 1,
            timeout=10,
            what="the open stream to be counted",
        )
        gate.touch()
        stream.until(is_final)
        stream.close()
        wait_until(
            lambda: metric(server, "scriptgate_job_event_streams") == 0,
            timeout=10,
            what="the ended stream to be uncounted",
        )

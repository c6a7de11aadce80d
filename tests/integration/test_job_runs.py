"""Every run on record, on real gunicorn with its job workers (SQLite, and a real
redis-server for the Redis store): a key lists its own runs newest first, in pages that
a new run does not shift; a `platform:jobs` key sees everyone's; bad filters are 400s
naming the parameter; the caller's key id is on the request line, the job's lines and
in the script's environ."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.keyfile import api_scripts_and_keys
from tests.servers import (
    Gunicorn,
    gunicorn,
    log_records,
    request_record,
    wait_until,
)

ALPHA = "sg_alpha_runs_0123456789abcdefghijklmnopqrstuv"
BETA = "sg_beta_runs_0123456789abcdefghijklmnopqrstuvw"
AUDITOR = "sg_auditor_runs_0123456789abcdefghijklmnopqrs"
SCRIPTS = {
    "ok.py": '''"""Answers who called, as its environ says."""
import logging
def main(request):
    logging.getLogger(__name__).info("running for %s", request.environ["scriptgate.caller"])
    return {
        "n": request.args.get("n"),
        "caller": request.environ.get("scriptgate.caller"),
        "owner": request.environ.get("scriptgate.caller_owner"),
    }
''',
    "loud.py": '''"""Prints when it is imported."""
print("loud.py imported")
def main(request):
    return "ok"
''',
    "boom.py": '''"""Always raises."""
def main(request):
    raise RuntimeError("boom")
''',
}


def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    keys = {"alpha": (ALPHA, '["api:*"]'), "beta": (BETA, '["api:*"]')}
    keys["auditor"] = (AUDITOR, '["platform:jobs"]')
    return api_scripts_and_keys(tmp_path, SCRIPTS, keys)


def start(server: Gunicorn, secret: str, script: str = "ok.py", **params: str) -> str:
    headers = {"X-API-Key": secret, "Prefer": "respond-async"}
    response = server.get(f"/api/{script}", headers=headers, params=params)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def listing(server: Gunicorn, headers: dict[str, str], **params: str) -> requests.Response:
    return server.get("/_platform/jobs", headers=headers, params=params)


def every_page(server: Gunicorn, headers: dict[str, str], **params: str) -> list[dict]:
    """Follow `next` to the end (at most 50 pages), from `cursor` if given."""
    jobs: list[dict] = []
    cursor = params.pop("cursor", None)
    for _ in range(50):
        extra = {"cursor": cursor} if cursor else {}
        response = listing(server, headers, **params, **extra)
        assert response.status_code == 200, response.text
        jobs += response.json()["jobs"]
        cursor = response.json()["next"]
        if cursor is None:
            return jobs
    raise AssertionError("more than 50 pages")


def finished(server: Gunicorn, secret: str, job_id: str) -> dict:
    def check() -> dict | None:
        found = server.get(f"/_platform/jobs/{job_id}", headers={"X-API-Key": secret}).json()
        return found if found["state"] in ("succeeded", "failed") else None

    return wait_until(check, timeout=30, interval=0.1, what=f"job {job_id} to finish")


def test_a_key_lists_its_runs_newest_first_in_pages_a_new_run_does_not_shift(tmp_path, store_env):
    scripts, env = setup(tmp_path)
    alpha, auditor = {"X-API-Key": ALPHA}, {"X-Admin-Key": AUDITOR}
    with gunicorn(scripts, tmp_path, workers=2, env={**env, **store_env}) as server:
        mine = [start(server, ALPHA, n=str(n)) for n in range(5)]
        theirs = [start(server, BETA, n=str(n)) for n in range(2)]
        first = listing(server, alpha, limit="2").json()
        assert [job["id"] for job in first["jobs"]] == mine[::-1][:2]
        later = start(server, ALPHA, n="late")  # created after the first page was read
        rest = every_page(server, alpha, limit="2", cursor=first["next"])
        assert [job["id"] for job in rest] == mine[::-1][2:]  # nothing skipped or repeated
        assert [job["id"] for job in every_page(server, alpha)] == [later, *mine[::-1]]
        assert [job["id"] for job in every_page(server, {"X-API-Key": BETA})] == theirs[::-1]
        everyone = every_page(server, auditor, limit="3")
        assert {job["id"] for job in everyone} == {*mine, *theirs, later}
        assert [job["id"] for job in every_page(server, auditor, caller="beta")] == theirs[::-1]
        record = everyone[0]
        assert record["caller"] == "alpha" and record["trigger"] == "call"
        assert (record["attempt"], record["attempts"], record["progress"]) == (1, 1, None)
        assert record["script"] == "/api/ok.py" and record["query"] == {"n": "late"}


def test_find_my_failed_jobs_by_state_script_and_time(tmp_path, store_env):
    scripts, env = setup(tmp_path)
    alpha = {"X-API-Key": ALPHA}
    with gunicorn(scripts, tmp_path, workers=2, env={**env, **store_env}) as server:
        good = start(server, ALPHA)
        bad = start(server, ALPHA, "boom.py")
        start(server, BETA, "boom.py")  # someone else's failure: not in alpha's list
        for job_id in (good, bad):
            finished(server, ALPHA, job_id)
        failed = every_page(server, alpha, state="failed")
        assert [job["id"] for job in failed] == [bad]
        assert failed[0]["result"]["status"] == 500 and failed[0]["duration_ms"] >= 0
        by_script = every_page(server, alpha, script="/api/ok.py")
        assert [job["id"] for job in by_script] == [good]
        assert every_page(server, alpha, since="2999-01-01T00:00:00Z") == []
        assert len(every_page(server, alpha, until="2999-01-01", trigger="call")) == 2


def test_bad_filters_are_400_naming_the_parameter_and_no_key_is_401(tmp_path):
    scripts, env = setup(tmp_path)
    alpha = {"X-API-Key": ALPHA}
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        start(server, ALPHA)
        for params, name in (
            ({"state": "exploded"}, "state"),
            ({"trigger": "cron"}, "trigger"),
            ({"since": "yesterday"}, "since"),
            ({"until": "2026-13-40"}, "until"),
            ({"limit": "0"}, "limit"),
            ({"limit": "500"}, "limit"),
            ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
            ({"cursor": "%%%"}, "cursor"),
            ({"cursor": "WyJuYW4iLCAiQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUEiXQ"}, "cursor"),
            ({"caller": "beta"}, "caller"),  # only platform:jobs may ask for another's
            ({"script": "/_platform/health"}, "script"),
            ({"colour": "red"}, "colour"),
        ):
            response = listing(server, alpha, **params)
            assert response.status_code == 400, (params, response.text)
            assert response.json()["fields"][0]["name"] == name, response.text
        anonymous = listing(server, {})
        assert anonymous.status_code == 401 and anonymous.json()["header"] == "X-API-Key"
        assert listing(server, {"X-API-Key": "wrong"}).status_code == 401
        assert len(listing(server, alpha).json()["jobs"]) == 1  # a 400 changed nothing


def test_the_caller_is_on_the_request_line_the_job_lines_and_in_the_scripts_environ(
    tmp_path,
):
    scripts, env = setup(tmp_path)
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        loud = start(server, ALPHA, "loud.py")
        response = server.get(
            "/api/ok.py",
            headers={"X-API-Key": ALPHA, "Prefer": "respond-async"},
            params={"n": "1", "token": "s3cret"},
        )
        job_id, trace_id = response.json()["id"], response.headers["X-Trace-Id"]
        record = finished(server, ALPHA, job_id)
        result = server.get(f"/_platform/jobs/{job_id}/result", headers={"X-API-Key": ALPHA})

        def job_lines() -> list[dict] | None:
            found = log_records(server)
            messages = {r["message"] for r in found if r.get("job_id") == job_id}
            imported = [r for r in found if r.get("job_id") == loud]
            if not any(r["message"] == "loud.py imported" for r in imported):
                return None
            return found if {"job", "running for alpha"} <= messages else None

        lines = wait_until(job_lines, what="the job's own lines")
        assert request_record(trace_id, server)["caller"] == "alpha"  # the 202 call
    assert record["query"] == {"n": "1", "token": "***"}  # as the request line redacts it
    assert result.json() == {"n": "1", "caller": "alpha", "owner": "alpha@example.com"}
    job_lines = [r for r in lines if r.get("job_id") == job_id]
    assert {r["message"] for r in job_lines} >= {"job queued", "job", "running for alpha"}
    assert {r["caller"] for r in job_lines} == {"alpha"}
    imported = [r for r in lines if r.get("job_id") == loud and r["message"] == "loud.py imported"]
    assert imported and imported[0]["caller"] == "alpha"  # its import's output, in the job
    status_lines = [
        r for r in lines if r.get("message") == "request" and r["path"].endswith(job_id)
    ]
    assert status_lines and {r["caller"] for r in status_lines} == {"alpha"}


FLAKY = '''"""Fails twice, then answers: each run appends a line to a file."""
RETRIES = 3
RETRY_DELAY = 0.2
def main(request):
    with open(request.args["file"], "a") as f:
        f.write("run\\n")
    with open(request.args["file"]) as f:
        runs = len(f.readlines())
    if runs < 3:
        raise RuntimeError(f"run {runs} fails")
    return {"runs": runs}
'''
REFUSES = '''"""A 4xx is an answer, never retried."""
from flask import abort
RETRIES = 3
RETRY_DELAY = 0.2
def main(request):
    with open(request.args["file"], "a") as f:
        f.write("run\\n")
    abort(422, description="dates are backwards")
'''
ALWAYS_FAILS = '''"""Raises every time: retried, then failed for good."""
RETRIES = 1
RETRY_DELAY = 0.2
def main(request):
    raise RuntimeError("still broken")
'''


def follow_retries(server: Gunicorn, job_id: str, limit: int = 10) -> list[dict]:
    """The first run and every retry, each finished, following `retried_as`."""
    runs = [finished(server, ALPHA, job_id)]
    for _ in range(limit):
        if runs[-1]["retried_as"] is None:
            return runs
        runs.append(finished(server, ALPHA, runs[-1]["retried_as"]))
    raise AssertionError(f"more than {limit} retries")


def test_a_failing_job_is_retried_until_it_succeeds_and_each_run_is_on_record(tmp_path, store_env):
    scripts, env = setup(tmp_path)
    (scripts / "api" / "flaky.py").write_text(FLAKY)
    side = tmp_path / "runs"
    with gunicorn(scripts, tmp_path, workers=1, env={**env, **store_env}) as server:
        first = start(server, ALPHA, "flaky.py", file=str(side))
        runs = follow_retries(server, first)
        history = every_page(server, {"X-API-Key": ALPHA}, script="/api/flaky.py")
        retried = every_page(server, {"X-API-Key": ALPHA}, trigger="retry")
        last = runs[-1]["id"]
        result = server.get(f"/_platform/jobs/{last}/result", headers={"X-API-Key": ALPHA})
        metrics = server.get("/_platform/metrics").text
        lines = log_records(server)
    assert [r["state"] for r in runs] == ["failed", "failed", "succeeded"]
    assert [(r["attempt"], r["attempts"]) for r in runs] == [(1, 4), (2, 4), (3, 4)]
    assert [r["trigger"] for r in runs] == ["call", "retry", "retry"]
    assert [r["retry_of"] for r in runs] == [None, runs[0]["id"], runs[1]["id"]]
    assert side.read_text() == "run\n" * 3 and result.json() == {"runs": 3}
    assert [r["id"] for r in history] == [r["id"] for r in runs[::-1]]  # newest first
    assert [r["id"] for r in retried] == [runs[2]["id"], runs[1]["id"]]
    assert 'scriptgate_job_retries_total{script="flaky.py",zone="api"} 2.0' in metrics
    assert 'scriptgate_job_final_failures_total{script="flaky.py",zone="api"} 0.0' in metrics
    queued = [r for r in lines if r.get("message") == "job retry queued"]
    assert [r["retry_of"] for r in queued] == [runs[0]["id"], runs[1]["id"]]
    assert {r["caller"] for r in queued} == {"alpha"}


def test_a_4xx_is_never_retried_and_a_last_failure_is_final(tmp_path):
    scripts, env = setup(tmp_path)
    (scripts / "api" / "refuses.py").write_text(REFUSES)
    (scripts / "api" / "broken.py").write_text(ALWAYS_FAILS)
    side = tmp_path / "runs"
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        refused = follow_retries(server, start(server, ALPHA, "refuses.py", file=str(side)))
        broken = follow_retries(server, start(server, ALPHA, "broken.py"))
        metrics = server.get("/_platform/metrics").text
    assert [(r["state"], r["result"]["status"]) for r in refused] == [("succeeded", 422)]
    assert side.read_text() == "run\n"  # ran once
    assert [(r["state"], r["attempt"], r["attempts"]) for r in broken] == [
        ("failed", 1, 2),
        ("failed", 2, 2),
    ]
    assert 'scriptgate_job_final_failures_total{script="broken.py",zone="api"} 1.0' in metrics
    assert 'scriptgate_job_retries_total{script="refuses.py",zone="api"} 0.0' in metrics


def test_an_idempotency_key_returns_the_same_job_and_a_different_request_is_422(
    tmp_path, store_env
):
    scripts, env = setup(tmp_path)
    (scripts / "ok.py").write_text(SCRIPTS["ok.py"])  # the root zone: no key
    again = {"X-API-Key": ALPHA, "Prefer": "respond-async", "Idempotency-Key": "order-42"}
    with gunicorn(scripts, tmp_path, workers=2, env={**env, **store_env}) as server:

        def send(secret: str = ALPHA, **params: str) -> requests.Response:
            headers = {**again, "X-API-Key": secret}
            url = server.url + "/api/ok.py"
            return requests.post(url, headers=headers, params=params, data=b"same", timeout=30)

        first = send(n="1")
        assert first.status_code == 202
        job_id = first.json()["id"]
        assert send(n="1").json()["id"] == job_id  # a client retrying its request
        finished(server, ALPHA, job_id)
        replay = send(n="1")
        assert (replay.status_code, replay.json()["id"]) == (200, job_id)
        assert replay.json()["state"] == "succeeded"
        assert replay.headers["Location"] == f"/_platform/jobs/{job_id}"
        changed = send(n="2")
        assert changed.status_code == 422, changed.text
        assert changed.json()["reason"] == "idempotency_key"
        assert changed.json()["job_id"] == job_id
        theirs = send(BETA, n="1")  # another caller's same key is another job
        assert theirs.status_code == 202 and theirs.json()["id"] != job_id
        runs = every_page(server, {"X-API-Key": ALPHA})
        open_zone = {"Prefer": "respond-async", "Idempotency-Key": "x"}
        anonymous = server.get("/ok.py", headers=open_zone)
    assert [job["id"] for job in runs] == [job_id]  # one run for the three requests
    assert anonymous.status_code == 400  # without a key, callers cannot be told apart
    assert anonymous.json()["header"] == "Idempotency-Key"

"""Jobs through the app, with the embedded SQLite store: the 202 hand-off, who may see a
job, bad input, and jobs run in-process by the job worker's own executor, whose result
must be exactly what the synchronous call answered."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import pytest

from service.jobs.execute import JobExecutor
from service.jobs.http import prefers_async
from service.jobs.watch import Shutdown
from tests.servers import stays_the_same, wait_until
from tests.unit.conftest import ADMIN, API, API_KEY, log_records, write_scripts

OTHER_KEY = "unit-other-api-key-000000"
JOB_SCRIPTS = {
    "api/echo.py": """
        from flask import jsonify
        def main(request):
            reply = jsonify(method=request.method, args=request.args.to_dict(),
                            body=request.get_data(as_text=True),
                            seen_key=request.headers.get("X-API-Key"),
                            cookie=request.headers.get("Cookie"),
                            note=request.headers.get("X-Note"))
            reply.headers["X-Script"] = "echo"
            return reply, 201
    """,
    "api/boom.py": """
        def main(request):
            raise RuntimeError("boom")
    """,
    "api/nothing.py": """
        def main(request):
            return None
    """,
    "api/refuse.py": """
        from flask import abort
        def main(request):
            abort(422, description="dates are backwards")
    """,
    "api/always.py": """
        '''Always a job.'''
        ASYNC = True
        JOB_TIMEOUT = 120
        def main(request):
            return {"async": True}
    """,
    "api/loop.py": """
        import time
        JOB_TIMEOUT = 0.5
        def main(request):
            path = request.args["file"]
            while True:
                with open(path, "a") as f:
                    f.write("x\\n")
                time.sleep(0.02)
    """,
    "api/forever.py": """
        import time
        JOB_TIMEOUT = 60
        def main(request):
            path = request.args["file"]
            try:
                while True:
                    with open(path, "a") as f:
                        f.write("x\\n")
                    time.sleep(0.02)
            finally:
                with open(path + ".cleaned", "w") as f:
                    f.write("finally ran")
    """,
    "api/bytes.py": """
        def main(request):
            return bytes(range(256)) * 4
    """,
}
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def jobs_app(make_app, scripts_dir: Path):
    write_scripts(scripts_dir, JOB_SCRIPTS)
    return make_app(api_keys=(API_KEY, OTHER_KEY))


@pytest.fixture
def client(jobs_app):
    return jobs_app.test_client()


def store(app):
    return app.extensions["scriptgate"].jobs.store


def submit(client, path: str, headers: dict | None = None, **kwargs) -> str:
    response = client.open(path, headers={**API, **ASYNC, **(headers or {})}, **kwargs)
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["id"]


def run_jobs(app, *job_ids: str, shutdown: Shutdown | None = None) -> None:
    """What a job worker does with each job id it takes off the queue, in-process."""
    executor = JobExecutor(app, "unit:1", shutdown or Shutdown())
    for job_id in job_ids:
        executor(job_id)


def status(client, job_id: str, headers: dict | None = None):
    return client.get(f"/_platform/jobs/{job_id}", headers=headers if headers is not None else API)


def test_prefer_respond_async_answers_202_with_where_to_follow(client, jobs_app):
    response = client.get("/api/echo.py?x=1", headers={**API, **ASYNC})
    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == f"/_platform/jobs/{body['id']}"
    assert response.headers["Preference-Applied"] == "respond-async"
    assert body["state"] == "queued" and body["script"] == "/api/echo.py"
    assert body["trace_id"] == response.headers["X-Trace-Id"]
    assert len(body["id"]) == 32
    assert store(jobs_app).stats().queued == 1
    assert status(client, body["id"]).get_json()["state"] == "queued"


def test_async_script_is_always_a_job_without_preference_applied(client):
    response = client.get("/api/always.py", headers=API)
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers


def test_head_is_never_queued(client, jobs_app):
    assert client.head("/api/always.py", headers=API).status_code == 200
    assert store(jobs_app).stats().queued == 0


@pytest.mark.parametrize(
    ("path", "headers", "status_code"),
    [
        ("/api/nope.py", API, 404),
        ("/api/echo.py", {}, 401),
        ("/api/echo.py", {"X-API-Key": "wrong"}, 401),
        ("/admin/stats.py", API, 401),
    ],
)
def test_refused_calls_queue_nothing(client, jobs_app, path, headers, status_code):
    response = client.get(path, headers={**headers, **ASYNC})
    assert response.status_code == status_code
    assert "Location" not in response.headers
    assert store(jobs_app).stats().queued == 0


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ("respond-async", True),
        ("Respond-Async", True),
        ("return=minimal, respond-async, wait=10", True),
        ("respond-async; foo=bar", True),
        ("wait=5, respond-async", True),  # two Prefer headers, as the WSGI server joins them
        ("wait=100", False),
        ("respond-asyncx", False),
        ("", False),
    ],
)
def test_prefer_header_parsing(header, wanted):
    assert prefers_async(header) is wanted


@pytest.mark.parametrize(
    ("path", "method", "kwargs"),
    [
        ("/api/echo.py?a=1&b=two", "GET", {}),
        ("/api/echo.py", "POST", {"data": "payload ü", "content_type": "text/plain"}),
        ("/api/boom.py", "GET", {}),
        ("/api/nothing.py", "GET", {}),
        ("/api/refuse.py", "GET", {}),
        ("/api/bytes.py", "GET", {}),
    ],
)
def test_result_is_what_the_synchronous_call_answered(client, jobs_app, path, method, kwargs):
    headers = {**API, "X-Note": "kept", "Cookie": "session=secret"}
    sync = client.open(path, method=method, headers=headers, **kwargs)
    job_id = submit(client, path, headers, method=method, **kwargs)
    run_jobs(jobs_app, job_id)
    result = client.get(f"/_platform/jobs/{job_id}/result", headers=API)
    assert result.status_code == sync.status_code
    sync_body, job_body = sync.get_data(), result.get_data()
    if sync.is_json and "trace_id" in sync.get_json():  # an error body: its own trace id
        sync_json, job_json = sync.get_json(), result.get_json()
        assert job_json.pop("trace_id") == status(client, job_id).get_json()["trace_id"]
        sync_json.pop("trace_id")
        assert job_json == sync_json
    elif "seen_key" in (sync.get_json(silent=True) or {}):  # echo: credentials never queued
        expected = {**sync.get_json(), "seen_key": None, "cookie": None}
        assert result.get_json() == expected
    else:
        assert job_body == sync_body
    skip = {"X-Trace-Id", "traceresponse", "Content-Length"}
    assert [h for h in result.headers if h[0] not in skip] == [
        h for h in sync.headers if h[0] not in skip
    ]


def test_states_and_errors_of_finished_jobs(client, jobs_app):
    ok, failed, refused = (
        submit(client, p) for p in ("/api/echo.py", "/api/boom.py", "/api/refuse.py")
    )
    run_jobs(jobs_app, ok, failed, refused)
    assert status(client, ok).get_json()["state"] == "succeeded"
    assert status(client, refused).get_json()["state"] == "succeeded"  # the script's own 422
    body = status(client, failed).get_json()
    assert (body["state"], body["error"], body["result"]["status"]) == (
        "failed",
        "internal error",
        500,
    )
    assert body["started_at"] <= body["finished_at"] < body["expires_at"]
    errors = [r for r in log_records_of(jobs_app) if r.get("level") == "ERROR"]
    assert (
        errors and errors[0]["job_id"] == failed and "RuntimeError: boom" in errors[0]["exc_info"]
    )


def log_records_of(app) -> list[dict]:
    return log_records(app.extensions["scriptgate"].settings.log_file)


def test_job_log_line_carries_job_id_and_trace_id(client, jobs_app):
    response = client.get("/api/echo.py", headers={**API, **ASYNC})
    job_id, trace_id = response.get_json()["id"], response.headers["X-Trace-Id"]
    run_jobs(jobs_app, job_id)
    records = log_records_of(jobs_app)
    queued = next(r for r in records if r["message"] == "job queued")
    done = next(r for r in records if r["message"] == "job")
    assert (queued["job_id"], queued["trace_id"]) == (job_id, trace_id)
    assert (done["job_id"], done["trace_id"], done["state"]) == (job_id, trace_id, "succeeded")


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": OTHER_KEY}, {}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}],
    ids=["other-valid-key", "no-key", "wrong-key", "longer-key"],
)
def test_only_the_key_that_started_a_job_sees_it(client, headers):
    job_id = submit(client, "/api/echo.py")
    for method, suffix in (("GET", ""), ("GET", "/result"), ("DELETE", "")):
        response = client.open(f"/_platform/jobs/{job_id}{suffix}", method=method, headers=headers)
        assert response.status_code == 404
        assert response.get_json()["error"] == "job not found"
    assert status(client, job_id).get_json()["state"] == "queued"  # the DELETEs did nothing


def test_admin_api_key_sees_and_cancels_every_callers_job(client):
    job_id = submit(client, "/api/echo.py")
    seen = status(client, job_id, ADMIN).get_json()
    assert (seen["id"], seen["caller"]) == (job_id, "api-key-1")
    assert client.delete(f"/_platform/jobs/{job_id}", headers=ADMIN).get_json()["state"] == (
        "cancelled"
    )


def test_a_key_removed_from_rotation_no_longer_sees_its_jobs(make_app, scripts_dir):
    write_scripts(scripts_dir, JOB_SCRIPTS)
    job_id = submit(make_app(api_keys=(API_KEY, OTHER_KEY)).test_client(), "/api/echo.py")
    after = make_app(api_keys=(OTHER_KEY,)).test_client()
    assert status(after, job_id).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/_platform/jobs/not-a-job",
        "/_platform/jobs/" + "A" * 32,
        "/_platform/jobs/" + "A" * 33,
        "/_platform/jobs/" + "A" * 31 + "%2F",
        "/_platform/jobs/",
        "/_platform/jobs/" + "A" * 32 + "/result",
        "/_platform/jobs/" + "A" * 32 + "/other",
        "/_platform/jobs/../health",
    ],
)
def test_unknown_and_malformed_ids_are_404_with_a_json_body(client, path):
    response = client.get(path, headers=API)
    assert response.status_code == 404
    assert set(response.get_json()) == {"error", "trace_id"}


def test_result_of_an_unfinished_job_is_409_naming_its_state(client):
    job_id = submit(client, "/api/echo.py")
    response = client.get(f"/_platform/jobs/{job_id}/result", headers=API)
    assert response.status_code == 409
    assert response.get_json()["error"] == "job not finished"
    assert response.get_json()["reason"] == "queued"


def test_cancelled_queued_job_never_runs(client, jobs_app, tmp_path):
    job_id = submit(client, f"/api/loop.py?file={tmp_path / 'never'}")
    response = client.delete(f"/_platform/jobs/{job_id}", headers=API)
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    run_jobs(jobs_app, job_id)  # the queue still hands its id to a worker
    assert not (tmp_path / "never").exists()
    assert status(client, job_id).get_json()["state"] == "cancelled"
    again = client.delete(f"/_platform/jobs/{job_id}", headers=API)
    assert again.status_code == 409 and again.get_json()["reason"] == "cancelled"
    result = client.get(f"/_platform/jobs/{job_id}/result", headers=API)
    assert result.status_code == 409 and result.get_json()["error"] == "job has no result"


def test_delete_of_a_finished_job_is_409_and_keeps_its_result(client, jobs_app):
    job_id = submit(client, "/api/echo.py")
    run_jobs(jobs_app, job_id)
    response = client.delete(f"/_platform/jobs/{job_id}", headers=API)
    assert response.status_code == 409
    assert response.get_json() | {"trace_id": None} == {
        "error": "job already finished",
        "reason": "succeeded",
        "trace_id": None,
    }
    assert client.get(f"/_platform/jobs/{job_id}/result", headers=API).status_code == 201


def test_cancelling_a_running_job_stops_its_script(client, jobs_app, tmp_path):
    side = tmp_path / "side"
    job_id = submit(client, f"/api/forever.py?file={side}")
    worker = threading.Thread(target=run_jobs, args=(jobs_app, job_id))
    worker.start()
    try:
        wait_until(lambda: side.exists() and side.stat().st_size > 0, what="the script to run")
        assert status(client, job_id).get_json()["state"] == "running"
        response = client.delete(f"/_platform/jobs/{job_id}", headers=API)
        assert response.status_code == 202
        assert response.get_json()["cancel_requested"] is True
        wait_until(lambda: status(client, job_id).get_json()["state"] == "cancelled", what="stop")
    finally:
        worker.join(10)
    assert stays_the_same(side)
    # Killed with its runner's process group: no `finally` runs after a cancel.
    assert not (tmp_path / "side.cleaned").exists()
    assert "result" not in status(client, job_id).get_json()


def test_job_past_its_timeout_is_timed_out_with_the_504_a_call_would_get(
    client, jobs_app, tmp_path
):
    side = tmp_path / "side"
    job_id = submit(client, f"/api/loop.py?file={side}")
    run_jobs(jobs_app, job_id)
    body = status(client, job_id).get_json()
    assert (body["state"], body["error"], body["result"]["status"]) == ("timed_out", "timeout", 504)
    result = client.get(f"/_platform/jobs/{job_id}/result", headers=API)
    assert result.get_json()["error"] == "timeout"
    assert stays_the_same(side)


def test_finished_jobs_disappear_after_their_retention(make_app, scripts_dir):
    write_scripts(scripts_dir, JOB_SCRIPTS)
    app = make_app(job_retention=0.3)
    client = app.test_client()
    job_id = submit(client, "/api/echo.py")
    run_jobs(app, job_id)
    assert status(client, job_id).status_code == 200
    wait_until(lambda: status(client, job_id).status_code == 404, timeout=5, what="expiry")
    assert store(app).sweep(10**10) == 1


def test_queue_metrics_at_scrape_time(client):
    submit(client, "/api/echo.py")
    text = client.get("/_platform/metrics").get_data(as_text=True)
    assert "scriptgate_jobs_queued 1.0" in text
    assert "scriptgate_job_store_up 1.0" in text
    assert 'scriptgate_jobs_total{script="echo.py",state="queued",zone="api"} 1.0' in text


def test_unreachable_store_is_503_and_queues_nothing(make_app, scripts_dir, tmp_path):
    write_scripts(scripts_dir, JOB_SCRIPTS)
    (tmp_path / "file").write_text("")
    app = make_app(job_data_dir=tmp_path / "file" / "data")  # cannot be a folder
    response = app.test_client().get("/api/echo.py", headers={**API, **ASYNC})
    assert response.status_code == 503
    assert response.get_json()["error"] == "job queue unavailable"
    text = app.test_client().get("/_platform/metrics").get_data(as_text=True)
    assert "scriptgate_job_store_up 0.0" in text


def test_routes_detail_shows_what_a_script_says_about_jobs(client):
    api = {e["path"]: e for e in client.get("/_platform/routes?detail=1").get_json()["api"]}
    assert api["always.py"]["async"] is True and api["always.py"]["job_timeout"] == 120
    assert "async" not in api["echo.py"] and "job_timeout" not in api["echo.py"]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("ASYNC = 'yes'", "ASYNC must be True or False"),
        ("JOB_TIMEOUT = 'long'", "JOB_TIMEOUT must be a number of seconds"),
        ("JOB_TIMEOUT = 0", "JOB_TIMEOUT must be greater than 0"),
        ("RETRIES = 'twice'", "RETRIES must be a whole number from 0 to 10"),
        ("RETRIES = 11", "RETRIES must be a whole number from 0 to 10"),
        ("RETRIES = 2\nRETRY_DELAY = -1", "RETRY_DELAY must be greater than 0"),
    ],
)
def test_bad_job_settings_in_a_script_are_import_errors(client, scripts_dir, line, error):
    write_scripts(scripts_dir, {"api/bad_job.py": f"{line}\ndef main(request):\n    return 1\n"})
    entry = next(
        e
        for e in client.get("/_platform/routes?detail=1").get_json()["api"]
        if e["path"] == "bad_job.py"
    )
    assert (entry["state"], entry["error"]) == ("import_error", error)


def test_a_job_running_when_its_worker_stops_is_failed_as_interrupted(client, jobs_app, tmp_path):
    side = tmp_path / "side"
    job_id = submit(client, f"/api/forever.py?file={side}")
    shutdown = Shutdown()
    worker = threading.Thread(
        target=run_jobs, args=(jobs_app, job_id), kwargs={"shutdown": shutdown}
    )
    worker.start()
    try:
        wait_until(lambda: side.exists() and side.stat().st_size > 0, what="the script to run")
        shutdown.request()
        shutdown.deadline = time.monotonic()  # its grace (STOP_GRACE_SECONDS) is over
    finally:
        worker.join(10)
    body = status(client, job_id).get_json()
    assert (body["state"], body["error"]) == ("failed", "interrupted: the job worker was stopped")
    assert stays_the_same(side)


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("JOB_RETENTION", "12h", "job_retention", 43200.0),
        ("JOB_RETENTION", "90", "job_retention", 90.0),
        ("JOB_TIMEOUT", "30m", "job_timeout", 1800.0),
        ("JOB_WORKERS", "0", "job_workers", 0),
        (
            "JOB_BROKER_URL",
            "redis://:secret@cache:6379/1",
            "job_broker_url",
            "redis://:secret@cache:6379/1",
        ),
        ("JOB_DATA_DIR", "/var/lib/scriptgate", "job_data_dir", Path("/var/lib/scriptgate")),
    ],
)
def test_job_settings_are_parsed(scripts_dir, variable, value, field, expected):
    from service.config import Settings

    settings = Settings.from_env({"SCRIPTS_DIR": str(scripts_dir), variable: value})
    assert getattr(settings, field) == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JOB_RETENTION", "soon"),
        ("JOB_RETENTION", "0"),
        ("JOB_TIMEOUT", "-5m"),
        ("JOB_WORKERS", "two"),
        ("JOB_BROKER_URL", "http://cache:6379"),
        ("JOB_MAX_RESULT_BYTES", "1.5"),
    ],
)
def test_bad_job_settings_name_the_variable_and_never_echo_a_broker_url(
    scripts_dir, variable, value
):
    from service.config import ConfigError, Settings

    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SCRIPTS_DIR": str(scripts_dir), variable: value})
    assert info.value.variable == variable
    if variable == "JOB_BROKER_URL":
        assert value not in str(info.value)


def test_job_records_and_the_listing_fit_their_openapi_schemas(client, jobs_app):
    import jsonschema

    from service.jobs.api_doc import JOB_LIST_SCHEMA, JOB_SCHEMA

    queued = submit(client, "/api/echo.py?token=s3cret")
    failed = submit(client, "/api/boom.py")
    run_jobs(jobs_app, failed)
    for job_id in (queued, failed):
        jsonschema.validate(status(client, job_id).get_json(), JOB_SCHEMA)
    listing = client.get("/_platform/jobs", headers=API).get_json()
    schema = copy.deepcopy(JOB_LIST_SCHEMA)  # its $ref points into the document
    schema["$defs"] = {"Job": JOB_SCHEMA}
    schema["properties"]["jobs"]["items"] = {"$ref": "#/$defs/Job"}
    jsonschema.validate(listing, schema)
    assert [job["id"] for job in listing["jobs"]] == [failed, queued]
    assert listing["jobs"][1]["query"] == {"token": "***"}

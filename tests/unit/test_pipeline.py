"""The request pipeline as a caller sees it: scripts' own HTTP errors, the real client,
deadlines at import, bulkheads, and what routes?detail says about each script."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.unit.conftest import API, log_records, write_scripts


def metric_value(client, name: str, **labels: str) -> float:
    text = client.get("/_platform/metrics").get_data(as_text=True)
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = ",".join(sorted(line[line.index("{") + 1 : line.index("}")].split(",")))
            if found == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


CALLER_ERRORS = {
    # name: (script, request kwargs, status, error text)
    "abort_with_description": (
        "from flask import abort\n"
        "def main(request):\n    abort(400, description='title is required')\n",
        {},
        400,
        "title is required",
    ),
    "abort_plain": (
        "from flask import abort\ndef main(request):\n    abort(404)\n",
        {},
        404,
        "not found",
    ),
    "bad_json": (
        "def main(request):\n    return request.get_json()\n",
        {"data": "{not json", "content_type": "application/json"},
        400,
        "Failed to decode JSON object",
    ),
    "wrong_content_type": (
        "def main(request):\n    return request.get_json()\n",
        {"data": "a=1", "content_type": "application/x-www-form-urlencoded"},
        415,
        "Content-Type",
    ),
    "conflict": (
        "from werkzeug.exceptions import Conflict\n"
        "def main(request):\n    raise Conflict('report already running')\n",
        {},
        409,
        "report already running",
    ),
}


@pytest.mark.parametrize("name", list(CALLER_ERRORS))
def test_a_scripts_http_error_is_the_callers_error_not_a_script_error(
    make_app, scripts_dir: Path, log_file: Path, name: str
) -> None:
    source, kwargs, status, error = CALLER_ERRORS[name]
    write_scripts(scripts_dir, {f"api/{name}.py": source})
    client = make_app().test_client()
    response = client.post(f"/api/{name}.py", headers=API, **kwargs)
    assert response.status_code == status
    body = response.get_json()
    assert error in body["error"]
    assert body["trace_id"] == response.headers["X-Trace-Id"]
    # Counted under its status, never as a script error, and no ERROR record.
    assert metric_value(client, "scriptgate_script_errors_total", zone="api", script=f"{name}.py",
                        kind="exception") == 0  # fmt: skip
    assert metric_value(client, "scriptgate_requests_total", zone="api", script=f"{name}.py",
                        method="POST", status=str(status)) == 1  # fmt: skip
    assert not [r for r in log_records(log_file) if r["level"] == "ERROR"]


def test_a_redirect_from_a_script_is_answered_as_it_is(make_app, scripts_dir: Path) -> None:
    write_scripts(
        scripts_dir,
        {"moved.py": "from flask import abort, redirect\n"
                     "def main(request):\n    abort(redirect('/hello.py'))\n"},
    )  # fmt: skip
    response = make_app().test_client().get("/moved.py")
    assert response.status_code == 302
    assert response.headers["Location"] == "/hello.py"


ECHO = """
def main(request):
    return {"remote": request.remote_addr, "route": request.access_route}
"""


@pytest.mark.parametrize(
    ("proxies", "peer", "forwarded", "client", "route"),
    [
        # No trusted proxy: X-Forwarded-For is ignored, and hidden from the script.
        ((), "10.0.0.5", "6.6.6.6", "10.0.0.5", ["10.0.0.5"]),
        # From the trusted proxy: the right-most untrusted hop; the forged one is cut.
        (("127.0.0.1/32",), "127.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4", ["1.2.3.4"]),
        # Two trusted hops: the client, then the hop the inner proxy added.
        (("127.0.0.1/32", "10.1.0.0/16"), "127.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.0.9",
         "1.2.3.4", ["1.2.3.4", "10.1.0.9"]),
        # A peer that is not trusted cannot forward for anyone.
        (("127.0.0.1/32",), "10.0.0.5", "1.2.3.4", "10.0.0.5", ["10.0.0.5"]),
    ],
)  # fmt: skip
def test_the_script_the_log_and_the_allowlist_see_the_real_client(
    make_app, scripts_dir: Path, log_file: Path, proxies, peer, forwarded, client, route
) -> None:
    from service.config import parse_networks

    write_scripts(scripts_dir, {"echo.py": ECHO})
    app = make_app(trusted_proxies=parse_networks("TRUSTED_PROXIES", ",".join(proxies)))
    response = app.test_client().get(
        "/echo.py", environ_base={"REMOTE_ADDR": peer}, headers={"X-Forwarded-For": forwarded}
    )
    assert response.get_json() == {"remote": client, "route": route}
    assert log_records(log_file)[-1]["client_ip"] == client


def test_the_allowlist_checks_the_real_client(make_app, scripts_dir: Path) -> None:
    from service.config import parse_networks

    write_scripts(scripts_dir, {"echo.py": ECHO})
    app = make_app(
        trusted_proxies=parse_networks("TRUSTED_PROXIES", "127.0.0.1"),
        api_trusted_ips=parse_networks("API_TRUSTED_IPS", "1.2.3.0/24"),
    )
    client = app.test_client()
    via_proxy = {"REMOTE_ADDR": "127.0.0.1"}
    allowed = client.get("/echo.py", environ_base=via_proxy, headers={"X-Forwarded-For": "1.2.3.4"})
    refused = client.get("/echo.py", environ_base=via_proxy, headers={"X-Forwarded-For": "5.5.5.5"})
    assert allowed.status_code == 200
    assert (refused.status_code, refused.get_json()["reason"]) == (403, "ip")


STUBBORN_IMPORT = """
import os, time
release = os.environ.get("SCRIPTGATE_TEST_RELEASE", "")
deadline = time.monotonic() + 20
while not os.path.exists(release) and time.monotonic() < deadline:
    try:
        while not os.path.exists(release) and time.monotonic() < deadline:
            pass
    except BaseException:
        pass
"""


def test_a_script_swallowing_its_timeout_at_import_still_gets_504(
    make_app, scripts_dir: Path, log_file: Path, tmp_path: Path, monkeypatch
) -> None:
    # The import swallows every ScriptTimeout until the test ends (then it is released,
    # so it does not spin on in the test process).
    release = tmp_path / "release"
    monkeypatch.setenv("SCRIPTGATE_TEST_RELEASE", str(release))
    write_scripts(scripts_dir, {"api/stubborn.py": STUBBORN_IMPORT})
    client = make_app(script_timeout=0.5).test_client()
    try:
        stubborn_call(client, log_file)
    finally:
        release.touch()


def stubborn_call(client, log_file: Path) -> None:
    assert client.get("/api/hello.py", headers=API).status_code == 200
    response = client.get("/api/stubborn.py", headers=API)
    assert response.status_code == 504
    error = next(r for r in log_records(log_file) if r["level"] == "ERROR")
    assert error["kind"] == "timeout" and "stubborn.py" in error["exc_info"]
    # Scripts already imported keep answering; under gunicorn the worker holding the
    # stuck import is then replaced (tests/hardening/test_faults.py).
    assert client.get("/api/hello.py", headers=API).status_code == 200


WAIT_FOR_FILE = """
CONCURRENCY = 1
import time
from pathlib import Path
def main(request):
    flag = Path(request.args["flag"])
    Path(request.args["started"]).touch()
    deadline = time.monotonic() + 10
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"
"""


def test_a_full_bulkhead_answers_429_at_once(make_app, scripts_dir: Path, tmp_path: Path) -> None:
    write_scripts(scripts_dir, {"api/single.py": WAIT_FOR_FILE})
    client = make_app().test_client()
    params = {"flag": str(tmp_path / "release"), "started": str(tmp_path / "started")}
    first: list = []
    holder = threading.Thread(
        target=lambda: first.append(client.get("/api/single.py", headers=API, query_string=params))
    )
    holder.start()
    try:
        from tests.servers import wait_until

        wait_until((tmp_path / "started").exists, timeout=10, what="the first call to start")
        refused = client.get("/api/single.py", headers=API, query_string=params)
    finally:
        (tmp_path / "release").touch()
        holder.join(15)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.get_json()["reason"] == "concurrency"
    assert first[0].status_code == 200
    assert metric_value(client, "scriptgate_requests_rejected_total", zone="api",
                        script="single.py", reason="concurrency") == 1  # fmt: skip
    # The slot is free again.
    assert client.get("/api/single.py", headers=API, query_string=params).status_code == 200


ROUTE_STATES = {
    "ok.py": ('"""Fine."""\nTIMEOUT = 150\ndef main(request):\n    return 1\n', "ok"),
    "syntax.py": ("def main(request)\n    return 1\n", "import_error"),
    "missing.py": ("import scriptgate_no_such_package\ndef main(request):\n    return 1\n",
                   "import_error"),
    "nohandler.py": ("X = 1\n", "no_handler"),
}  # fmt: skip


def test_routes_detail_shows_each_scripts_state_and_effective_timeout(
    make_app, scripts_dir: Path, log_file: Path
) -> None:
    write_scripts(scripts_dir, {f"api/states/{n}": src for n, (src, _) in ROUTE_STATES.items()})
    client = make_app(max_script_timeout=60.0).test_client()
    detail = client.get("/_platform/routes?detail=1").get_json()["api"]
    by_path = {entry["path"].removeprefix("states/"): entry for entry in detail}
    for name, (_, state) in ROUTE_STATES.items():
        assert by_path[name]["state"] == state, by_path[name]
    assert by_path["ok.py"]["timeout"] == 60.0 and "150" in by_path["ok.py"]["warning"]
    assert "SyntaxError" in by_path["syntax.py"]["error"]
    assert "(line 1)" in by_path["syntax.py"]["error"]
    assert "ModuleNotFoundError" in by_path["missing.py"]["error"]
    assert "scriptgate_no_such_package" in by_path["missing.py"]["error"]
    assert str(scripts_dir) not in str(detail)
    warnings = [r for r in log_records(log_file) if r["level"] == "WARNING"]
    assert any("TIMEOUT = 150" in r["message"] for r in warnings)


@pytest.mark.parametrize(
    "path", ["/nope.py", "/_platform/nope", "/api/../etc/passwd.py", "/api/_private.py"]
)
def test_a_404_body_is_exactly_error_and_trace_id(client, path: str) -> None:
    response = client.get(path, headers=API)
    assert response.status_code == 404
    assert response.get_json() == {"error": "not found", "trace_id": response.headers["X-Trace-Id"]}

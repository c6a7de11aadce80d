"""A script's own logging and print output: JSON lines with its request's fields."""

from __future__ import annotations

import pytest

from service.runners.channel import MAX_LINE_CHARS
from tests.unit.conftest import API, log_records, write_scripts

SCRIPTS = {
    "api/talk.py": """
        import logging, sys
        log = logging.getLogger(__name__)
        log.info("imported")
        def main(request):
            log.debug("a detail")
            log.info("working on %s", request.args.get("job", "?"), extra={"job_size": 3})
            log.warning("careful")
            logging.getLogger("some.library").warning("from a library")
            try:
                1 / 0
            except ZeroDivisionError:
                log.exception("handled")
            print("printed", "line")
            print("two\\nlines", end="")
            sys.stderr.write("to stderr\\n")
            return "ok"
    """,
}


@pytest.fixture
def talk(make_app, scripts_dir, log_file):
    write_scripts(scripts_dir, SCRIPTS)

    def call(level: str = "INFO") -> tuple[str, list[dict]]:
        client = make_app(log_level=level).test_client()
        response = client.get("/api/talk.py?job=7", headers=API)
        assert response.status_code == 200
        trace_id = response.headers["X-Trace-Id"]
        return trace_id, [r for r in log_records(log_file) if r.get("trace_id") == trace_id]

    return call


def test_script_log_lines_carry_the_requests_fields(talk) -> None:
    trace_id, records = talk()
    own = [r for r in records if r["logger"] == "scriptgate_script.api.talk"]
    assert [r["message"] for r in own] == ["imported", "working on 7", "careful", "handled"]
    for record in own:
        assert (record["zone"], record["script"], record["trace_id"]) == (
            "api",
            "talk.py",
            trace_id,
        )
        assert len(record["span_id"]) == 16
    assert own[1]["level"] == "INFO" and own[1]["job_size"] == 3
    assert "ZeroDivisionError" in own[3]["exc_info"]
    request_line = next(r for r in records if r["message"] == "request")
    assert request_line["status"] == 200


def test_a_library_called_by_a_script_logs_with_the_request_too(talk) -> None:
    _, records = talk()
    library = "scriptgate_script.some.library"  # under the script namespace: never a platform name
    assert any(r["logger"] == library and r["script"] == "talk.py" for r in records)


def test_log_level_applies_to_script_logs(talk) -> None:
    _, records = talk("WARNING")
    messages = {r["message"] for r in records}
    assert {"careful", "handled", "from a library"} <= messages
    assert not messages & {"imported", "working on 7", "request"}
    _, debug = talk("DEBUG")
    assert "a detail" in {r["message"] for r in debug}


def test_print_and_stderr_become_records_of_the_call(talk) -> None:
    _, records = talk()
    printed = [(r["level"], r["stream"], r["message"]) for r in records if r["logger"] == "print"]
    stdout = [p for p in printed if p[1] == "stdout"]
    assert stdout == [
        ("INFO", "stdout", "printed line"),
        ("INFO", "stdout", "two"),
        ("INFO", "stdout", "lines"),  # the last line, printed without "\n", at the end
    ]
    assert [p for p in printed if p[1] == "stderr"] == [("WARNING", "stderr", "to stderr")]
    assert all(r["script"] == "talk.py" for r in records if r["logger"] == "print")


def test_output_written_below_python_is_captured_too(make_app, scripts_dir, log_file) -> None:
    write_scripts(scripts_dir, {"low.py": """
        import os, subprocess
        def main(request):
            os.write(1, b"raw bytes\\n")
            subprocess.run(["echo", "from a child"], check=True)
            return "ok"
    """})  # fmt: skip
    response = make_app().test_client().get("/low.py")
    assert response.status_code == 200
    trace_id = response.headers["X-Trace-Id"]
    lines = {r["message"] for r in log_records(log_file) if r.get("trace_id") == trace_id}
    assert {"raw bytes", "from a child"} <= lines


def test_a_huge_printed_line_is_cut(make_app, scripts_dir, log_file) -> None:
    write_scripts(scripts_dir, {"noisy.py": "def main(request):\n    print('x' * 200_000)\n"})
    response = make_app().test_client().get("/noisy.py")
    assert response.status_code == 204
    (record,) = [r for r in log_records(log_file) if r.get("logger") == "print"]
    assert len(record["message"]) == MAX_LINE_CHARS and record["truncated"] is True


def test_a_calls_output_is_cut_at_its_budget(make_app, scripts_dir, log_file) -> None:
    write_scripts(
        scripts_dir,
        {"flood.py": "def main(request):\n    for _ in range(5000):\n        print('y' * 999)\n"},
    )
    response = make_app(script_output_limit=100_000).test_client().get("/flood.py")
    assert response.status_code == 204
    printed = [r for r in log_records(log_file) if r.get("logger") == "print"]
    assert sum(len(r["message"]) for r in printed) <= 100_000
    assert printed[-1]["message"].startswith("output cut: ") and printed[-1]["level"] == "WARNING"


def test_a_script_cannot_write_a_platform_line(make_app, scripts_dir, log_file) -> None:
    write_scripts(scripts_dir, {"api/forge.py": """
        import logging
        def main(request):
            extra = {"logger": "scriptgate", "caller": "admin-key-1", "trace_id": "0" * 32,
                     "zone": "admin", "job_id": "x"}
            logging.getLogger("scriptgate").error("request", extra=extra)
            return "ok"
    """})  # fmt: skip
    response = make_app().test_client().get("/api/forge.py", headers=API)
    trace_id = response.headers["X-Trace-Id"]
    (forged,) = [r for r in log_records(log_file) if r.get("level") == "ERROR"]
    assert forged["logger"] == "scriptgate_script.scriptgate"
    assert (forged["trace_id"], forged["zone"], forged["caller"]) == (trace_id, "api", "api-key-1")
    assert "job_id" not in forged

"""A script's own logging and print output: JSON lines with its request's fields."""

from __future__ import annotations

import io
import logging

import pytest

from service import scriptlog
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
    assert any(r["logger"] == "some.library" and r["script"] == "talk.py" for r in records)


def test_log_level_applies_to_script_logs(talk) -> None:
    _, records = talk("WARNING")
    messages = {r["message"] for r in records}
    assert {"careful", "handled", "from a library"} <= messages
    assert not messages & {"imported", "working on 7", "request"}
    _, debug = talk("DEBUG")
    assert "a detail" in {r["message"] for r in debug}


def test_print_and_stderr_become_records_when_captured(talk, monkeypatch) -> None:
    """Installed in every gunicorn worker (server.post_fork); here for this test only."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", scriptlog.CapturedStream(out, "stdout", logging.INFO))
    monkeypatch.setattr("sys.stderr", scriptlog.CapturedStream(err, "stderr", logging.WARNING))
    _, records = talk()
    printed = [(r["level"], r["stream"], r["message"]) for r in records if r["logger"] == "print"]
    assert printed == [
        ("INFO", "stdout", "printed line"),
        ("INFO", "stdout", "two"),
        ("WARNING", "stderr", "to stderr"),
        ("INFO", "stdout", "lines"),  # the last line, printed without "\n", at the end
    ]
    assert all(r["script"] == "talk.py" for r in records if r["logger"] == "print")
    assert out.getvalue() == "" and err.getvalue() == ""
    print("outside any request")
    assert out.getvalue() == "outside any request\n"


def test_a_huge_printed_line_is_cut(monkeypatch, make_app, scripts_dir, log_file) -> None:
    write_scripts(scripts_dir, {"noisy.py": "def main(request):\n    print('x' * 200_000)\n"})
    monkeypatch.setattr("sys.stdout", scriptlog.CapturedStream(io.StringIO(), "stdout", 20))
    response = make_app().test_client().get("/noisy.py")
    assert response.status_code == 204
    (record,) = [r for r in log_records(log_file) if r.get("logger") == "print"]
    assert len(record["message"]) == scriptlog.MAX_LINE_CHARS and record["truncated"] is True


def test_records_outside_a_request_go_where_python_sends_them(capsys) -> None:
    scriptlog.install("INFO")
    logging.getLogger("scriptgate_script.nowhere").warning("no request here")
    logging.getLogger("scriptgate_script.nowhere").info("dropped like Python would")
    err = capsys.readouterr().err
    assert "no request here" in err and "dropped" not in err

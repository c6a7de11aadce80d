"""A script's own log lines and print output under real gunicorn: JSON lines in LOG_FILE
and on stdout, each with the trace id of the request that made it."""

from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.servers import gunicorn, log_records, wait_until

KEY = "script-logs-key-77d1"
SCRIPT = '''
    """Logs, prints and writes to stderr; the job number tells the calls apart."""
    import logging, sys, time
    log = logging.getLogger(__name__)
    def main(request, job: int):
        log.info("job %d started", job)
        print(f"job {job} printed")
        time.sleep(0.02)  # calls overlap in a worker's threads
        sys.stderr.write(f"job {job} complained\\n")
        log.debug("job %d detail", job)
        return {"job": job}
'''


def test_script_log_lines_land_in_the_file_with_their_requests_trace_id(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    (scripts / "api").mkdir(parents=True)
    (scripts / "api" / "worker.py").write_text(textwrap.dedent(SCRIPT).lstrip())
    with gunicorn(scripts, tmp_path, workers=3, env={"API_KEY": KEY}) as server:
        with ThreadPoolExecutor(6) as pool:
            replies = list(
                pool.map(
                    lambda job: server.get(f"/api/worker.py?job={job}", headers={"X-API-Key": KEY}),
                    range(24),
                )
            )
        assert [r.status_code for r in replies] == [200] * 24
        traces = {r.json()["job"]: r.headers["X-Trace-Id"] for r in replies}

        def script_lines() -> list[dict]:
            records = [r for r in log_records(server) if r.get("script") == "worker.py"]
            return records if len(records) >= 24 * 4 else []

        records = wait_until(script_lines, what="every call's script log lines")
        output = server.output.read_text()

    by_trace: dict[str, set[str]] = {}
    for record in records:
        by_trace.setdefault(record["trace_id"], set()).add(record["message"])
        assert record["zone"] == "api" and len(record["span_id"]) == 16
    for job, trace_id in traces.items():
        assert by_trace[trace_id] == {
            "request",
            f"job {job} started",
            f"job {job} printed",
            f"job {job} complained",
        }, f"job {job}: lines missing or carrying another request's trace id"
    printed = [r for r in records if r.get("logger") == "print"]
    streams = {(r["level"], r["stream"]) for r in printed}
    assert streams == {("INFO", "stdout"), ("WARNING", "stderr")}
    assert not any("detail" in r["message"] for r in records), "DEBUG is below LOG_LEVEL"

    # The same JSON lines on stdout; no raw print output anywhere.
    stdout_lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(r["message"] == "job 3 printed" and r["trace_id"] == traces[3] for r in stdout_lines)
    assert "\njob 3 printed\n" not in output

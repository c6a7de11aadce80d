"""Scripts that fail in every way a script can: the platform answers, logs and carries on.

Each fault runs on real gunicorn (3 workers, SCRIPT_TIMEOUT=1). After it: the error body
is the contract's JSON with the trace id and nothing else, the log has an ERROR record
with that trace id and the traceback, the next requests to another script are 200, and
the server-wide counters have not lost a single request, even when a worker died.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.hardening.harness import (
    Reply,
    assert_clean_error,
    error_record,
    fetch,
    read_log,
    record_figure,
    request_duration,
    write_script,
)
from tests.servers import WORKER_PID, Gunicorn, alive, gunicorn, wait_until

SECRET = "SECRET-DETAIL-7c21"  # in every exception message; must never reach a client
AFTER = 6  # requests to another script after each fault

SCRIPTS = {
    "hello.py": f"import os\ndef main(request):\n    return {{'pid': {WORKER_PID}}}\n",
    "slow.py": "import os, time\ndef main(request):\n    time.sleep(0.3)\n"
    f"    return {{'pid': {WORKER_PID}}}\n",
    # failures inside the handler
    "raises.py": f"def main(request):\n    raise ValueError('{SECRET} in ' + __file__)\n",
    "sys_exit.py": "import sys\ndef main(request):\n    sys.exit(3)\n",
    "recursion.py": "def main(request):\n    def down(n):\n        return down(n + 1)\n"
    "    return down(0)\n",
    "unserializable.py": "def main(request):\n    return {'when': object()}\n",
    "returns_set.py": "def main(request):\n    return {1, 2}\n",
    "noisy.py": "import sys\ndef main(request):\n    print('x' * 5_000_000)\n"
    "    sys.stderr.write('y' * 1_000_000)\n    return 'ok'\n",
    "keyboard_interrupt.py": f"def main(request):\n    raise KeyboardInterrupt('{SECRET}')\n",
    "base_exception.py": "class Stop(BaseException):\n    pass\n"
    f"def main(request):\n    raise Stop('{SECRET}')\n",
    "bad_status.py": "def main(request):\n    return 'body', 'not a status'\n",
    # failures while importing
    "import_error.py": f"raise RuntimeError('{SECRET} at import')\ndef main(request):\n    pass\n",
    "syntax_error.py": "def main(request:\n    return 1\n",
    "import_exit.py": "import sys\nsys.exit(1)\n",
    "no_handler.py": "VALUE = 1\n",
    # running past the deadline
    "loop.py": "import os\ndef main(request):\n"
    f"    open(PID_FILE, 'w').write(f'{{{WORKER_PID}}} {{os.getpid()}}')\n"
    "    n = 0\n    while True:\n        n += 1\n",
    "swallow_five.py": "def main(request):\n    caught = 0\n    while True:\n        try:\n"
    "            while True:\n                caught += 0\n        except BaseException:\n"
    "            caught += 1\n            if caught >= 5:\n                raise\n",
    "swallow_forever.py": "import os\ndef main(request):\n"
    "    open(PID_FILE, 'w').write(str(os.getpid()))\n    n = 0\n    while True:\n"
    "        try:\n            while True:\n                n += 1\n"
    "        except BaseException:\n            pass\n",
    "swallow_sleeping.py": "import os, time\ndef main(request):\n"
    "    open(PID_FILE, 'w').write(str(os.getpid()))\n    while True:\n"
    "        try:\n            time.sleep(10)\n        except BaseException:\n"
    "            pass\n",
    # taking the worker down
    "os_exit.py": "import os\ndef main(request):\n    os._exit(1)\n",
    # gunicorn halts the whole server when a worker exits with 3 or 4
    "os_exit_3.py": "import os\ndef main(request):\n    os._exit(3)\n",
    "os_exit_4.py": "import os\ndef main(request):\n    os._exit(4)\n",
    "segfault.py": "import ctypes\ndef main(request):\n    ctypes.string_at(0)\n",
}


# Written just before its call: the health probes' scanner would otherwise find the hang
# first and back the script off, and the call would get 503 instead of its own 504.
LATE = {"import_hang.py": "n = 0\nwhile True:\n    n += 1\n"}


def fault(script: str, status: int, kind: str, cause: str, *marks) -> object:
    """One row: the script, its status, the error kind (log and metric), and what the
    logged traceback must show."""
    return pytest.param(script, status, kind, cause, marks=marks, id=script)


FAULTS = [
    fault("raises.py", 500, "exception", SECRET),
    fault("sys_exit.py", 500, "exception", "SystemExit: 3"),
    fault("recursion.py", 500, "exception", "RecursionError"),
    fault("unserializable.py", 500, "exception", "not JSON serializable"),
    fault("returns_set.py", 500, "exception", "handler returned set"),
    fault("import_error.py", 500, "import", SECRET),
    fault("syntax_error.py", 500, "import", "SyntaxError"),
    fault("import_exit.py", 500, "import", "SystemExit: 1"),
    fault("no_handler.py", 500, "import", "no handle(request) or main(request)"),
    fault("import_hang.py", 504, "timeout", "import_hang.py"),
    fault("swallow_five.py", 504, "timeout", "swallow_five.py"),
    fault("keyboard_interrupt.py", 500, "exception", SECRET),
    fault("base_exception.py", 500, "exception", SECRET),
    fault("bad_status.py", 500, "exception", "status"),
]


def write_scripts(folder: Path, pid_file: Path) -> None:
    for name, source in SCRIPTS.items():
        write_script(folder / name, source.replace("PID_FILE", repr(str(pid_file))))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("faults")
    write_scripts(base / "scripts", base / "pid")
    return base


@pytest.fixture(scope="module")
def server(base: Path) -> Iterator[Gunicorn]:
    with gunicorn(base / "scripts", base, workers=3, env={"SCRIPT_TIMEOUT": "1"}) as server:
        yield server


def totals(server: Gunicorn) -> tuple[int, int]:
    health = server.get("/_platform/health").json()
    return health["requests_total"], health["errors_total"]


def script_errors(server: Gunicorn, script: str, kind: str) -> float:
    text = server.get("/_platform/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "scriptgate_script_errors_total" and sample.labels == {
                "zone": "root",
                "script": script,
                "kind": kind,
            }:
                return sample.value
    return 0.0


def serves_again(server: Gunicorn, count: int = AFTER) -> list[Reply]:
    """`count` requests to another script, each of which must be a 200."""
    replies = [fetch(server.port, "/hello.py") for _ in range(count)]
    assert [r.status for r in replies] == [200] * count, [r.body[:200] for r in replies]
    return replies


@pytest.mark.parametrize(("script", "status", "kind", "cause"), FAULTS)
def test_fault_is_answered_logged_and_survived(
    server: Gunicorn, base: Path, script: str, status: int, kind: str, cause: str
) -> None:
    requests_before, errors_before = totals(server)
    if script in LATE:
        write_script(base / "scripts" / script, LATE[script])
    reply = fetch(server.port, f"/{script}")

    assert reply.status == status, reply.body[:300]
    assert_clean_error(reply, SECRET, str(base))
    record = error_record(server.log_file, reply.headers["x-trace-id"])
    assert (record["kind"], record["script"], record["zone"]) == (kind, script, "root")
    assert "Traceback (most recent call last)" in record["exc_info"]
    assert cause in record["exc_info"]
    assert script_errors(server, script, kind) >= 1

    serves_again(server)
    assert totals(server) == (requests_before + 1 + AFTER, errors_before + 1)


def test_megabytes_on_stdout_do_not_disturb_the_worker(server: Gunicorn) -> None:
    reply = fetch(server.port, "/noisy.py")
    assert (reply.status, reply.body) == (200, b"ok")
    serves_again(server)
    assert all(r["message"] for r in read_log(server.log_file))


def worker_answers(server: Gunicorn, pid: int, rounds: int = 10) -> bool:
    """Send slow calls, 3 at a time, until `pid` answers one (at most `rounds` times)."""
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        for _ in range(rounds):
            replies = list(pool.map(lambda _: fetch(server.port, "/slow.py"), range(3)))
            assert all(r.status == 200 for r in replies), replies
            if pid in {r.json()["pid"] for r in replies}:
                return True
    return False


def test_endless_loop_is_504_and_the_same_worker_serves_again(server: Gunicorn, base: Path):
    reply = fetch(server.port, "/loop.py")

    assert reply.status == 504
    assert_clean_error(reply, str(base))
    record = error_record(server.log_file, reply.headers["x-trace-id"])
    assert record["kind"] == "timeout" and "Traceback" in record["exc_info"]
    # Stopped by its own deadline, inside its loop.
    assert "deadline of 1 s passed" in record["exc_info"] and "loop.py" in record["exc_info"]
    worker, runner = map(int, (base / "pid").read_text().split())
    wait_until(lambda: not alive(runner), timeout=5, what="the looping runner to be killed")
    assert worker in server.worker_pids(), "the worker was replaced instead of its runner"
    assert worker_answers(server, worker), f"worker {worker} never answered after its 504"
    serves_again(server)


@pytest.mark.parametrize("script", ["os_exit.py", "os_exit_3.py", "os_exit_4.py", "segfault.py"])
def test_a_runner_that_dies_is_a_500_for_its_own_call_only(server: Gunicorn, script: str) -> None:
    """The caller of a script that kills its runner gets the contract's 500 (reason
    runner_died), logged and counted as `crashed`; no worker dies, no count is lost."""
    workers_before = server.worker_pids()
    requests_before, errors_before = totals(server)

    reply = fetch(server.port, f"/{script}")
    assert reply.status == 500 and reply.json()["reason"] == "runner_died"
    record = error_record(server.log_file, reply.headers["x-trace-id"])
    assert (record["kind"], record["script"]) == ("crashed", script)
    assert script_errors(server, script, "crashed") >= 1
    serves_again(server)
    assert server.worker_pids() == workers_before
    assert totals(server) == (requests_before + 1 + AFTER, errors_before + 1)


@pytest.mark.parametrize("script", ["swallow_forever.py", "swallow_sleeping.py"])
def test_script_swallowing_every_interrupt_still_gets_504_at_its_deadline(
    server: Gunicorn, base: Path, script: str, request
) -> None:
    """A script that catches BaseException in a loop: its runner is killed at the
    deadline (a signal no code can catch), the caller has its 504 at once, and the worker
    serves on. The request is logged and counted like any timeout."""
    workers_before = server.worker_pids()
    requests_before, errors_before = totals(server)
    reply = fetch(server.port, f"/{script}")
    runner = int((base / "pid").read_text())

    assert reply.status == 504
    assert_clean_error(reply, str(base))
    record = error_record(server.log_file, reply.headers["x-trace-id"])
    assert (record["kind"], record["script"]) == ("timeout", script)
    wait_until(lambda: not alive(runner), timeout=5, what="the runner to be killed")
    duration = request_duration(server.log_file, reply.headers["x-trace-id"])
    assert duration < 1500, f"the 504 took {duration:.0f} ms for a 1 s deadline"
    serves_again(server)
    assert server.worker_pids() == workers_before
    assert totals(server) == (requests_before + 1 + AFTER, errors_before + 1)
    record_figure(
        request.config,
        f"faults: {script} (swallows every interrupt) got its 504 at its deadline "
        f"({duration:.0f} ms); its runner was killed, its worker served on",
    )

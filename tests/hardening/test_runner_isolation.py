"""Hostile scripts against runner processes, on real gunicorn, as CI runs it (root).

Each case is one a hostile script author tried on 2026-12-06 against the threads design
(issue: "a script can only hurt itself"). Here runners run as `nobody`, the platform's
files are the operator's (keys file and secrets 0600), and every test checks what a
caller or an operator would notice: answers, log lines, counters, processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import statistics
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.runner_user import RUNNER_USER, readable_tree, world_python, world_readable_root
from tests.servers import Gunicorn, alive, gunicorn, wait_until

API_KEY = "isolation-api-key-0123456789"
ADMIN_KEY = "isolation-admin-key-9876543210"
NAMED_KEY = "isolation-named-key-5555555555"
API = {"X-API-Key": API_KEY}
ADMIN = {"X-Admin-Key": ADMIN_KEY}
SHARED_SECRET = "shared-secret-value-1111"
API_SECRET = "api-zone-secret-value-2222"
ADMIN_SECRET = "admin-zone-secret-value-3333"
MATERIAL = [API_KEY, ADMIN_KEY, NAMED_KEY, ADMIN_SECRET] + [
    hashlib.sha256(k.encode()).hexdigest() for k in (API_KEY, ADMIN_KEY, NAMED_KEY)
]

SNOOP = """
import gc, json, os, sys
from pathlib import Path

PLACES = json.loads(os.environ.get("SNOOP_PLACES", "{}"))

def attempt(action):
    try:
        return "read: " + str(action())[:200]
    except Exception as exc:
        return "refused: " + type(exc).__name__

def main(request, places: str):
    places = json.loads(places)
    worker = int(open(f"/proc/{os.getppid()}/stat").read().rpartition(")")[2].split()[1])
    from service.scripts.secrets import secret
    return {
        "uid": os.getuid(),
        "environ": sorted(os.environ),
        "keys_file": attempt(lambda: Path(places["keys_file"]).read_text()),
        "admin_secret_file": attempt(lambda: Path(places["admin_secret"]).read_text()),
        "secrets_dir": attempt(lambda: os.listdir(places["secrets_dir"])),
        "jobs_db": attempt(lambda: Path(places["jobs_db"]).read_bytes()),
        "log_file": attempt(lambda: Path(places["log_file"]).read_text()),
        "worker_environ": attempt(lambda: open(f"/proc/{worker}/environ", "rb").read()),
        "worker_mem": attempt(lambda: open(f"/proc/{worker}/mem", "rb").read(1)),
        "worker_fds": attempt(lambda: os.listdir(f"/proc/{worker}/fd")),
        "admin_secret": attempt(lambda: secret("admin_only")),
        "shared_secret": attempt(lambda: secret("shared")),
        "other_scripts": sorted(m for m in sys.modules if m.startswith("scriptgate_script.")),
        "fds": sorted(attempt(lambda: os.readlink(f"/proc/self/fd/{fd}"))
                      for fd in list(os.listdir("/proc/self/fd"))),
        "pid": os.getpid(),
    }
"""

PATCHER = """
import json, os, sys
import flask, service.access.guard, service.http.errors, service.http.pipeline

CAPTURED = []

def main(request):
    real = service.access.guard.authorize
    def spy(*args, **kwargs):
        CAPTURED.append(dict(args[3]))
        return real(*args, **kwargs)
    service.access.guard.authorize = spy
    service.http.pipeline.authorize = lambda *a, **k: None  # open every zone?
    json.dumps = lambda *a, **k: '"patched"'
    flask.json.dumps = json.dumps
    os.chdir("/")
    sys.path.insert(0, "/tmp")
    return f"captured={len(CAPTURED)} cwd_at_start={CWD}"  # its own json.dumps is patched

CWD = os.getcwd()
"""

RELATIVE = """
import os
def main(request):
    with open("data.txt") as f:
        return {"data": f.read(), "cwd": os.getcwd()}
"""

FDLEAK = """
import os
KEPT = []
def main(request):
    try:
        while True:
            KEPT.append(open("/dev/null"))
    except OSError:
        pass
    return {"pid": os.getpid(), "open": len(KEPT)}
"""

THREADS = """
import os, threading
def main(request):
    for _ in range(300):
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    return {"pid": os.getpid()}
"""

ORPHANS = """
import os, subprocess, time
TIMEOUT = 1
def main(request):
    subprocess.Popen(["true"])  # finished, never waited for: a zombie unless reaped
    if os.fork() == 0:
        os.setsid()  # leaves the runner's process group
        if os.fork() == 0:
            open(request.args["file"], "w").write(str(os.getpid()))
            time.sleep(600)
        os._exit(0)
    while True:
        time.sleep(0.05)
"""

ZOMBIES = """
import os, subprocess, time
def main(request):
    for _ in range(3):
        subprocess.Popen(["true"])
    time.sleep(0.2)
    return {"pid": os.getpid()}
"""

HOG = """
import os
MEMORY_LIMIT = "300M"
KEPT = []
def main(request):
    KEPT.append(bytearray(80 * 1024 * 1024))
    return {"pid": os.getpid(), "held_mb": 80 * len(KEPT)}
"""

FLOOD = """
import os
def main(request):
    line = "z" * 1023 + "\\n"
    for _ in range(64 * 1024):
        os.write(1, line.encode())
    return "done"
"""

HANGS_AT_IMPORT = """
while True:
    try:
        while True:
            pass
    except BaseException:
        pass
def main(request):
    return "never"
"""


def write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip())


@pytest.fixture(scope="module")
def site() -> Iterator[dict[str, Path]]:
    """Scripts (world-readable, as deployed), private keys file and secrets, a python."""
    with world_readable_root() as root:
        scripts = root / "scripts"
        for name, source in {
            "snoop.py": SNOOP,
            "patcher.py": PATCHER,
            "relative.py": RELATIVE,
            "data.txt": "relative read ok",
            "fdleak.py": FDLEAK,
            "threads.py": THREADS,
            "orphans.py": ORPHANS,
            "zombies.py": ZOMBIES,
            "hog.py": HOG,
            "flood.py": FLOOD,
            "hello.py": "def main(request):\n    return {'hello': 'world'}\n",
            "api/secrets.py": (
                "from service.scripts.secrets import secret\n"
                "def main(request):\n"
                "    out = {'own': secret('token'), 'shared': secret('shared')}\n"
                "    try:\n        secret('admin_only')\n    except LookupError:\n"
                "        out['admin'] = 'not found'\n"
                "    return out\n"
            ),
            "admin/secrets.py": (
                "from service.scripts.secrets import secret\n"
                "def main(request):\n    return {'admin': secret('admin_only')}\n"
            ),
        }.items():
            write(scripts / name, source)
        readable_tree(scripts)
        drop = root / "drop"  # where scripts leave markers for the test
        drop.mkdir()
        drop.chmod(0o1777)
        private = root / "private"  # the operator's: readable by root only
        private.mkdir(mode=0o700)
        keys = private / "keys.toml"
        digest = hashlib.sha256(NAMED_KEY.encode()).hexdigest()
        keys.write_text(
            f'[keys.named]\nowner = "ops@example.com"\nhash = "sha256:{digest}"\n'
            'scopes = ["api:*"]\n'
        )
        secrets = private / "secrets"
        (secrets / "api").mkdir(parents=True)
        (secrets / "admin").mkdir()
        (secrets / "shared").write_text(SHARED_SECRET)
        (secrets / "api" / "token").write_text(API_SECRET)
        (secrets / "admin" / "admin_only").write_text(ADMIN_SECRET)
        for path in (keys, secrets / "shared", secrets / "api" / "token"):
            path.chmod(0o600)
        yield {
            "root": root,
            "scripts": scripts,
            "keys": keys,
            "secrets": secrets,
            "python": Path(world_python(root)),
        }


@pytest.fixture(scope="module")
def server(site: dict[str, Path]) -> Iterator[Gunicorn]:
    run = site["root"] / "run"
    run.mkdir(mode=0o700)
    env = {
        "API_KEY": API_KEY,
        "ADMIN_API_KEY": ADMIN_KEY,
        "KEYS_FILE": str(site["keys"]),
        "SECRETS_DIR": str(site["secrets"]),
        "RUNNER_USER": RUNNER_USER,
        "SCRIPT_TIMEOUT": "2",
        "JOB_WORKERS": "1",
        "JOB_DATA_DIR": str(run / "data"),
        "SCRIPT_OUTPUT_LIMIT": "1048576",
    }
    with gunicorn(site["scripts"], run, workers=2, env=env, python=str(site["python"])) as s:
        yield s


def places(site: dict[str, Path], server: Gunicorn) -> dict[str, str]:
    return {
        "keys_file": str(site["keys"]),
        "admin_secret": str(site["secrets"] / "admin" / "admin_only"),
        "secrets_dir": str(site["secrets"]),
        "jobs_db": str(site["root"] / "run" / "data" / "jobs.db"),
        "log_file": str(server.log_file),
    }


def test_serve_says_nothing_is_exposed_to_the_runner_user(server: Gunicorn) -> None:
    output = server.output.read_text()
    assert "RUNNER_USER" not in output, output  # no warning: nothing of ours is readable


def test_a_script_without_a_key_reads_no_key_no_setting_and_no_other_zones_secret(
    site: dict[str, Path], server: Gunicorn
) -> None:
    report = server.get("/snoop.py", params={"places": json.dumps(places(site, server))}).json()
    assert report["uid"] == 65534  # nobody
    assert not {"API_KEY", "ADMIN_API_KEY", "KEYS_FILE", "SECRETS_DIR", "REDIS_URL"} & set(
        report["environ"]
    )
    for place in ("keys_file", "admin_secret_file", "secrets_dir", "jobs_db", "log_file"):
        assert report[place] == "refused: PermissionError", (place, report[place])
    for place in ("worker_environ", "worker_mem", "worker_fds"):
        assert report[place].startswith("refused"), (place, report[place])
    assert report["admin_secret"] == "refused: SecretNotFound"
    assert report["shared_secret"] == f"read: {SHARED_SECRET}"
    assert report["other_scripts"] == ["scriptgate_script.snoop"]
    opened = [fd.partition(": ")[2] for fd in report["fds"] if fd.startswith("read")]
    assert all(fd.startswith(("pipe:", "socket:", "/dev/null", "/proc/")) for fd in opened), opened
    # Read from outside (the test is root): no key, digest or other zone's secret anywhere
    # in the runner's memory.
    assert memory_holds(report["pid"], MATERIAL) == []


def memory_holds(pid: int, needles: list[str]) -> list[str]:
    found: set[str] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if "r" not in perms:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            found |= {n for n in needles if n.encode() in chunk}
    return sorted(found)


def test_secrets_belong_to_their_zone(server: Gunicorn) -> None:
    api = server.get("/api/secrets.py", headers=API).json()
    assert api == {"own": API_SECRET, "shared": SHARED_SECRET, "admin": "not found"}
    admin = server.get("/admin/secrets.py", headers=ADMIN).json()
    assert admin == {"admin": ADMIN_SECRET}
    assert ADMIN_SECRET not in server.log_file.read_text()


def test_a_patching_script_changes_nothing_outside_its_runner(server: Gunicorn) -> None:
    for _ in range(4):  # both workers' runners patched
        assert server.get("/patcher.py").status_code == 200
    refused = [server.get("/admin/secrets.py") for _ in range(6)]
    assert [r.status_code for r in refused] == [401] * 6
    assert refused[0].json()["error"] == "unauthorized"  # the platform's own JSON, unpatched
    assert server.get("/hello.py").json() == {"hello": "world"}
    assert server.get("/_platform/health").json()["status"] == "ok"
    relative = server.get("/relative.py").json()
    assert relative["data"] == "relative read ok"
    again = server.get("/patcher.py").text  # its own runner, warm: chdir undone per call
    assert again.startswith("captured=0 ")  # no later caller's headers reached it
    assert again.endswith(f"cwd_at_start={server_scripts(server)}")


def server_scripts(server: Gunicorn) -> Path:
    return Path(server.env.get("SCRIPTS_DIR") or _scripts_arg(server))


def _scripts_arg(server: Gunicorn) -> str:
    argv = server.proc.args
    return argv[argv.index("--scripts") + 1]


def answer(server: Gunicorn, path: str) -> dict:
    reply = server.get(path)
    if reply.status_code != 200:
        trace = reply.headers["X-Trace-Id"]
        lines = [line for line in server.log_file.read_text().splitlines() if trace in line]
        raise AssertionError(f"{path}: {reply.status_code} {reply.text}\n" + "\n".join(lines))
    return reply.json()


def test_a_runner_out_of_descriptors_or_with_leaked_threads_is_replaced(server: Gunicorn) -> None:
    first = answer(server, "/fdleak.py")
    assert 900 < first["open"] < 1024  # stopped by its own limit, not the worker's
    second = answer(server, "/fdleak.py")
    assert second["pid"] != first["pid"]  # replaced after the call that wore it out
    assert server.get("/_platform/health").status_code == 200
    threads = answer(server, "/threads.py")
    assert answer(server, "/threads.py")["pid"] != threads["pid"]
    assert server.get("/hello.py").status_code == 200


def test_children_and_orphans_die_with_their_runner_and_zombies_are_reaped(
    site: dict[str, Path], server: Gunicorn
) -> None:
    marker = site["root"] / "drop" / "orphan.pid"
    reply = server.get("/orphans.py", params={"file": str(marker)})
    assert reply.status_code == 504
    orphan = int(wait_until(lambda: marker.exists() and marker.read_text(), what="the orphan"))
    wait_until(lambda: not alive(orphan), timeout=5, what="the orphan to be killed")
    runner = server.get("/zombies.py").json()["pid"]
    children = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == runner]
    assert children == []  # its finished children were reaped after the call
    metrics = server.get("/_platform/metrics").text
    assert 'scriptgate_requests_in_progress{zone="root"} 0.0' in metrics


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError):
        return -1


def test_a_script_over_its_memory_limit_fails_alone_and_the_next_call_works(
    server: Gunicorn,
) -> None:
    """Each call keeps 80 MB more in its runner; past its MEMORY_LIMIT (300M) that call is
    a JSON 500 saying why, its runner is replaced, and the next call on it starts fresh."""
    replies = [server.get("/hog.py") for _ in range(10)]
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 500} and 500 in statuses, statuses
    first = statuses.index(500)
    failed = replies[first]
    assert failed.json() == {
        "error": "internal error",
        "reason": "memory",
        "trace_id": failed.headers["X-Trace-Id"],
    }
    later = [r.json()["held_mb"] for r in replies[first + 1 :] if r.status_code == 200]
    assert 80 in later, later  # a fresh runner after the one that ran out
    metrics = server.get("/_platform/metrics").text
    assert 'scriptgate_script_errors_total{kind="memory",script="hog.py",zone="root"}' in metrics
    assert server.get("/hello.py").status_code == 200


def test_megabytes_written_below_python_are_cut_to_the_budget(server: Gunicorn) -> None:
    before = server.log_file.stat().st_size
    assert server.get("/flood.py").text == "done"
    grown = server.log_file.stat().st_size - before
    assert grown < 3 * 1024 * 1024, f"64 MiB of output became {grown} bytes of log"
    lines = server.log_file.read_text().splitlines()
    assert all(json.loads(line) for line in lines[-50:])  # JSON lines, no raw bytes


def test_no_key_or_secret_reaches_the_log(server: Gunicorn) -> None:
    text = server.log_file.read_text()
    assert not [m for m in MATERIAL if m in text]


def test_health_answers_at_once_while_a_script_import_never_ends(
    site: dict[str, Path], server: Gunicorn
) -> None:
    hang = site["scripts"] / "hangs.py"
    write(hang, HANGS_AT_IMPORT)
    readable_tree(site["scripts"])
    try:
        took = []
        for _ in range(60):
            started = time.monotonic()
            assert server.get("/_platform/health", timeout=5).status_code == 200
            took.append(time.monotonic() - started)
        p99 = statistics.quantiles(took, n=100)[98]
        assert p99 < 0.1, f"health p99 {p99 * 1000:.0f} ms with a hanging import"
        first = server.get("/hangs.py", timeout=10)
        assert first.status_code in (503, 504)
        wait_until(
            lambda: server.get("/hangs.py", timeout=5).status_code == 503,
            timeout=10,
            what="the hanging script to be backed off",
        )
        backed_off = server.get("/hangs.py")
        assert backed_off.json()["reason"] == "backed_off" and "Retry-After" in backed_off.headers
        routes = server.get("/_platform/routes?detail=1").json()["root"]
        assert next(r for r in routes if r["path"] == "hangs.py")["state"] == "backed_off"
        assert server.get("/_platform/health").json()["scripts_backed_off"] >= 1
        metrics = server.get("/_platform/metrics").text
        assert 'scriptgate_script_backoffs_total{script="hangs.py",zone="root"}' in metrics
    finally:
        hang.unlink()
    assert server.get("/hello.py").status_code == 200


def test_the_server_stops_promptly_with_busy_runners(site: dict[str, Path]) -> None:
    run = site["root"] / "stop"
    run.mkdir(mode=0o700)
    env = {"RUNNER_USER": RUNNER_USER, "SCRIPT_TIMEOUT": "30"}
    with gunicorn(site["scripts"], run, workers=2, env=env, python=str(site["python"])) as s:
        assert s.get("/threads.py").status_code == 200
        marker = site["root"] / "drop" / "stop-orphan.pid"
        with contextlib.suppress(requests.RequestException):  # it runs on, we do not wait
            s.get("/orphans.py", params={"file": str(marker)}, timeout=0.5)
        orphan = int(wait_until(lambda: marker.exists() and marker.read_text(), what="orphan"))
        port = s.port
        started = time.monotonic()
    stopped = time.monotonic() - started
    assert stopped < 10, f"stopping took {stopped:.1f} s"
    wait_until(lambda: not alive(orphan), timeout=5, what="the orphan to die with the server")
    with socket.socket() as probe:  # nothing a script started holds the port: a restart binds
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        probe.bind(("127.0.0.1", port))
        probe.listen()

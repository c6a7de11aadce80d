"""The first hour, for real: `make run` as the README says, and starts that fail cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from bench.procs import clean_env
from tests.servers import REPO, SCRIPTGATE, free_port, wait_until

VENV = Path(sys.prefix)
LISTENING = re.compile(r"^Scriptgate listening on http://127\.0\.0\.1:(\d+) ", re.M)


@contextmanager
def make_run(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[int, Path]]:
    """`make run PORT=...` from the repository, serving from this test's environment.

    `-o` keeps make from installing into it (building .venv-run takes the network and
    half a minute; the Makefile's own install step is what `make run` does first).
    """
    port = free_port()
    output = tmp_path / "make-run.out"
    full_env = clean_env({"LOG_FILE": str(tmp_path / "logs" / "framework.log"), **env})
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # when the suite runs under make
        full_env.pop(name, None)
    command = ["make", "--no-print-directory", "run", f"PORT={port}", f"RUN_VENV={VENV}"]
    command += ["-o", f"{VENV}/.installed"]
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(
            lambda: proc.poll() is not None or LISTENING.search(output.read_text()),
            timeout=60,
            what="make run to listen",
        )
        assert proc.poll() is None, output.read_text()
        yield port, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # make and the server it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_make_run_prints_the_demo_keys_and_a_curl_that_works(tmp_path: Path) -> None:
    with make_run(tmp_path, {}) as (port, output):
        text = output.read_text()
        assert "X-API-Key: demo-api-key   (demo key; set API_KEY to use your own)" in text
        assert "X-Admin-Key: demo-admin-key   (demo key; set ADMIN_API_KEY to use your own)" in text
        assert f"Docs: http://127.0.0.1:{port}/_platform/docs" in text
        assert LISTENING.search(text)[1] == str(port)
        assert "warning" not in text
        curl = re.search(r"^Try: (curl .*)$", text, re.M)[1]
        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "HTTP/1.1 200 OK" in result.stdout
        assert '{"message":"Hello, Rico!"}' in result.stdout
        admin = requests.get(
            f"http://127.0.0.1:{port}/admin/stats.py",
            headers={"X-Admin-Key": "demo-admin-key"},
            timeout=10,
        )
        assert admin.status_code == 200


def test_make_run_prints_your_own_key_and_warns_about_a_closed_zone(tmp_path: Path) -> None:
    env = {"API_KEY": "my-own-key-5d2e,my-next-key", "ADMIN_API_KEY": ""}
    with make_run(tmp_path, env) as (port, output):
        text = output.read_text()
        assert "X-API-Key: my-own-key-5d2e   (yours, from API_KEY)" in text
        assert "demo-api-key" not in text and "my-next-key" not in text
        assert "  X-Admin-Key:" not in text, "a key set empty is no key to print"
        assert (
            "warning: /admin/* is closed (403 zone_disabled): ADMIN_API_KEY is not set. "
            "Set it, or ADMIN_AUTH=off to open /admin without a key."
        ) in text
        url = f"http://127.0.0.1:{port}"
        own = requests.get(f"{url}/api/hello.py", headers={"X-API-Key": "my-own-key-5d2e"})
        demo = requests.get(f"{url}/api/hello.py", headers={"X-API-Key": "demo-api-key"})
        admin = requests.get(f"{url}/admin/stats.py", headers={"X-Admin-Key": "demo-admin-key"})
        assert (own.status_code, demo.status_code, admin.status_code) == (200, 401, 403)
        assert demo.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


FAILED_STARTS = {
    "port taken": (["--bind", "127.0.0.1:{port}"], {}, "BIND: cannot listen on 127.0.0.1:{port}"),
    "platform port taken": (
        ["--bind", "127.0.0.1:{free}", "--platform-bind", "127.0.0.1:{port}"],
        {},
        "PLATFORM_BIND: cannot listen on 127.0.0.1:{port}",
    ),
    "log file not writable": (
        ["--bind", "127.0.0.1:{free}"],
        {"LOG_FILE": "/proc/version/framework.log"},
        "LOG_FILE: cannot write '/proc/version/framework.log'",
    ),
}


@pytest.mark.parametrize("case", FAILED_STARTS)
def test_a_failed_start_says_why_in_one_line_and_leaves_no_folder(
    tmp_path: Path, taken_port: int, case: str
) -> None:
    args, env, message = FAILED_STARTS[case]
    fill = {"port": taken_port, "free": free_port()}
    temp = tmp_path / "tmp"
    temp.mkdir()
    full_env = clean_env({"TMPDIR": str(temp), "API_KEY": "k", "ADMIN_API_KEY": "a", **env})
    full_env.setdefault("LOG_FILE", str(tmp_path / "logs" / "framework.log"))
    argv = [SCRIPTGATE, "serve", *(a.format(**fill) for a in args)]
    result = subprocess.run(
        [*argv, "--scripts", str(REPO / "scripts")],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: " + message.format(**fill))
    assert list(temp.iterdir()) == [], "a failed start left its folders behind"

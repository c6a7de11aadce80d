"""Fixtures for the observability-stack tests: a scripts folder with every outcome."""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.servers import REPO, wait_until

T = TypeVar("T")
GATE_VARIABLE = "STACK_GATE_DIR"
# How long a gated script waits for the gate at most, so no call outlives a failed test.
GATE_SECONDS = 12

# Scripts that make each metric and alert move: a raise, a run past SCRIPT_TIMEOUT, and
# one call slow enough for the p95 alert (2 s) yet inside its own TIMEOUT; two that
# show what a script sees of its caller and of the URL it was called by; and two that
# wait at a gate the test opens, one of them with a concurrency limit of 1.
EXTRA_SCRIPTS = {
    "boom.py": '''"""Always raises: a 500, an exception in the metrics and the log."""


def main(request):
    raise RuntimeError("boom")
''',
    "sleep.py": '''"""Runs past SCRIPT_TIMEOUT: a 504."""

import time


def main(request):
    time.sleep(10)
''',
    "slow.py": '''"""Slow but within its own TIMEOUT: lands in the (2.5, 5] s bucket."""

import time

TIMEOUT = 10


def main(request):
    time.sleep(2.6)
    return "slow ok\\n"
''',
    "whoami.py": '''"""The caller's address as the script sees it."""


def main(request):
    return {"remote_addr": request.remote_addr, "access_route": request.access_route}
''',
    "scheme.py": '''"""The scheme and URL root a script builds its links from."""


def main(request):
    return {
        "scheme": request.scheme,
        "url_root": request.url_root,
        "forwarded_proto": request.headers.get("X-Forwarded-Proto"),
    }
''',
    "_gate.py": f'''"""Wait until the file {GATE_VARIABLE}/open exists, {GATE_SECONDS} s at most."""

import os
import time
import uuid
from pathlib import Path


def hold():
    gate = Path(os.environ["{GATE_VARIABLE}"])
    (gate / f"held-{{uuid.uuid4().hex}}").touch()
    deadline = time.monotonic() + {GATE_SECONDS}
    while not (gate / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released\\n"
''',
    "held.py": f'''"""Holds a worker thread until the test opens the gate."""

from _gate import hold

TIMEOUT = {GATE_SECONDS + 5}


def main(request):
    return hold()
''',
    "limited.py": f'''"""One call at a time: while one waits at the gate, another is a 429."""

from _gate import hold

CONCURRENCY = 1
TIMEOUT = {GATE_SECONDS + 5}


def main(request):
    return hold()
''',
}


def make_scripts(dest: Path) -> Path:
    """The repository's example scripts plus EXTRA_SCRIPTS, in `dest`."""
    shutil.copytree(REPO / "scripts", dest)
    for name, source in EXTRA_SCRIPTS.items():
        (dest / name).write_text(source)
    return dest


@pytest.fixture
def stack_scripts(tmp_path: Path) -> Path:
    return make_scripts(tmp_path / "scripts")


class Gate:
    """The folder the gated scripts (held.py, limited.py) wait on; give `env` to the server."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.env = {GATE_VARIABLE: str(directory)}

    def waiting(self) -> int:
        return len(list(self.directory.glob("held-*")))

    @contextlib.contextmanager
    def holding(
        self, call: Callable[[], T], count: int
    ) -> Iterator[list[concurrent.futures.Future[T]]]:
        """Start `count` calls; yield once all of them wait at the gate, then open it.

        On the way out the gate is opened, the calls' answers awaited (bounded by the
        scripts' own GATE_SECONDS) and the gate closed again for the next use.
        """
        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(call) for _ in range(count)]
            try:
                wait_until(
                    lambda: self.waiting() >= count,
                    timeout=10,
                    what=f"{count} calls waiting at the gate",
                )
                yield futures
            finally:
                (self.directory / "open").touch()
                concurrent.futures.wait(futures, timeout=GATE_SECONDS + 5)
                for path in self.directory.iterdir():
                    path.unlink()

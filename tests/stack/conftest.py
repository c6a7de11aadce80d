"""Fixtures for the observability-stack tests: a scripts folder with every outcome."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.servers import REPO

# Scripts that make each metric and alert move: a raise, a run past SCRIPT_TIMEOUT, and
# one call slow enough for the p95 alert (2 s) yet inside its own TIMEOUT; and one that
# shows what a script sees of its caller.
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

"""A server whose runners really run as an unprivileged user, on any machine CI uses.

CI runs as root, so `serve` runs its runners as RUNNER_USER (`nobody` here). That account
must read the Python installation, and the test machine's Python lives under /root
(mode 0700). So the server runs on Debian's /usr/bin/python3 (the same minor version, so
the project venv's packages load), in a venv whose only addition is a .pth file that adds
the project venv's site-packages. Everything else is the real thing: the real user, the
real file modes, the real kernel checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

RUNNER_USER = "nobody"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def available() -> str:
    """Why a runner-user server cannot run here ('' when it can)."""
    if os.geteuid() != 0:
        return "runners switch user only when the server starts as root"
    if not SYSTEM_PYTHON.exists():
        return "no /usr/bin/python3"
    version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if version != str(sys.version_info[:2]):
        return f"/usr/bin/python3 is {version}, the project venv {sys.version_info[:2]}"
    return ""


@contextmanager
def world_readable_root() -> Iterator[Path]:
    """A folder the runner user can traverse (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="scriptgate-runner-user-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def world_python(root: Path) -> str:
    """A venv on /usr/bin/python3 that sees the project venv's packages."""
    reason = available()
    if reason:
        pytest.fail(f"cannot run runners as {RUNNER_USER}: {reason}")
    venv = root / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", venv], check=True)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = venv / "lib" / version / "site-packages"
    ours = sysconfig.get_paths()["purelib"]
    (site / "scriptgate-project.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return str(venv / "bin" / "python")


def readable_tree(path: Path) -> None:
    """Folders 0755 and files 0644 below `path`: what a deployed scripts folder is."""
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)

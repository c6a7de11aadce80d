"""`scriptgate serve` without the platform's secrets in its environment.

Scripts run inside the workers and can read `os.environ` and `/proc/self/environ`.
Deleting a variable from os.environ does not erase it from /proc/self/environ (the
kernel shows the environment the process was started with), and every worker is
forked from the master, so the master itself must start without them. When the
environment holds a platform secret, `serve` builds its Settings (keys become SHA-256
digests), writes them as JSON to an anonymous in-memory file, and re-executes itself
with those variables removed and `--settings-fd N`; the new process reads its settings
from there and closes the file. The pid stays the same, so a supervisor notices nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from service.config import Settings

# Variables holding the platform's own secrets. REDIS_URL may carry a password.
SECRET_VARIABLES = ("API_KEY", "ADMIN_API_KEY", "REDIS_URL", "JOB_BROKER_URL")
FD_OPTION = "--settings-fd"


def secrets_in(environ: Mapping[str, str]) -> list[str]:
    return [name for name in SECRET_VARIABLES if name in environ]


def reexec_without_secrets(settings: Settings, environ: Mapping[str, str]) -> NoReturn:
    """Replace this process by the same command with a clean environment."""
    fd = _anonymous_file(json.dumps(encode(settings)).encode())
    env = {k: v for k, v in environ.items() if k not in SECRET_VARIABLES}
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv repeats the interpreter's own options and how it was started
    # (console script or -m), so the new process resolves imports exactly the same way.
    os.execve(sys.executable, [*sys.orig_argv, FD_OPTION, str(fd)], env)  # noqa: S606


def receive(fd: int) -> Settings:
    """The settings the previous image of this process handed over."""
    with os.fdopen(fd, "rb") as handed:
        return decode(json.loads(handed.read()))


def _anonymous_file(data: bytes) -> int:
    """A file with no name in any folder, open across exec (a pipe's buffer could fill)."""
    try:
        fd = os.memfd_create("scriptgate-settings", 0)
    except (AttributeError, OSError):  # not Linux
        fd, name = tempfile.mkstemp(prefix="scriptgate-settings-")
        os.unlink(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def encode(settings: Settings) -> dict[str, Any]:
    return {f.name: _encode(getattr(settings, f.name)) for f in dataclasses.fields(settings)}


def decode(data: Mapping[str, Any]) -> Settings:
    return Settings(**{name: _decode(value) for name, value in data.items()})


def _encode(value: Any) -> Any:
    """JSON for the value types Settings holds, tagged so they come back as they were."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return {"path": str(value)}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return {"network": str(value)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(item) for item in value]}
    raise TypeError(f"cannot hand over a setting of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((kind, raw),) = value.items()
    if kind == "path":
        return Path(raw)
    if kind == "bytes":
        return bytes.fromhex(raw)
    if kind == "network":
        return ipaddress.ip_network(raw)
    if kind == "tuple":
        return tuple(_decode(item) for item in raw)
    raise ValueError(f"unknown setting kind {kind!r}")

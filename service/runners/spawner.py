"""The worker's handle on its zygote (zygote.py): started on first use, again if it
died; asked to fork a runner for a script, or to kill one.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from service.runners import protocol
from service.runners.limits import RunnerUser

ZYGOTE_START_SECONDS = 60.0


@dataclass(frozen=True)
class RunnerConfig:
    """What runners are started with; nothing secret (it is sent to the zygote)."""

    scripts_dir: str
    log_level: str
    max_body: int
    memory: int  # bytes; a script's MEMORY_LIMIT replaces it
    user: RunnerUser | None
    environ: dict[str, str] = field(default_factory=dict)  # no platform variable in it
    idle_max: int = 64  # warm runners kept per worker, all scripts together
    idle_seconds: float = 300.0


class Zygote:
    """The worker's template process (zygote.py): started on first use, again if it died."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.reader: protocol.Reader | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**self.config.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "service.runners.zygote", str(theirs.fileno())],
            env=env,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            cwd="/",
        )
        theirs.close()
        c = self.config
        user = c.user
        config = {
            "scripts_dir": c.scripts_dir,
            "log_level": c.log_level,
            "max_body": c.max_body,
            "runner_user": None
            if user is None
            else {"name": user.name, "uid": user.uid, "gid": user.gid},
        }
        ours.sendall(protocol.encode(config))
        ours.settimeout(ZYGOTE_START_SECONDS)
        reader = protocol.Reader(ours)
        ready = reader.message()
        if not isinstance(ready, dict) or ready.get("t") != "ready":
            raise protocol.ProtocolError("the zygote did not start")
        ours.settimeout(None)
        self.sock, self.reader = ours, reader

    def spawn(self, path: str, memory: int) -> tuple[int, socket.socket]:
        with self.lock:
            for attempt in (1, 2):  # a zygote that died is started again, once
                try:
                    if self.sock is None:
                        self._start()
                    assert self.sock is not None
                    self.sock.sendall(
                        protocol.encode({"t": "spawn", "path": path, "memory": memory})
                    )
                    payload, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
                    if not fds:
                        raise protocol.ProtocolError("the zygote sent no runner")
                    reply = protocol.decode(payload)
                    assert isinstance(reply, dict)
                    return int(reply["pid"]), socket.socket(fileno=fds[0])
                except (OSError, protocol.ProtocolError):
                    self._close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def warm(self) -> None:
        """Start now, in the background, so the first call finds it ready."""

        def start() -> None:
            with self.lock, contextlib.suppress(OSError, protocol.ProtocolError):
                if self.sock is None:
                    self._start()

        threading.Thread(target=start, name="scriptgate-zygote-start", daemon=True).start()

    def kill(self, pid: int) -> None:
        with self.lock:
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendall(protocol.encode({"t": "kill", "pid": pid}))

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)  # it kills its runners when the socket closes
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        with self.lock:
            self._close()

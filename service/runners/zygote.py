"""The template process runners are forked from: `python -I -m service.runners.zygote FD`.

A worker starts it with an empty environment and only the socket FD, so nothing of the
platform's (keys, settings, open files) is in its memory, and so in no runner forked from
it. It imports what every runner needs once (Flask, pydantic, the runner code), which
makes a cold start a fork plus the script's own import.

It is a subreaper: a runner's orphaned children become its own, and are killed, so
nothing a script starts outlives its runner. It exits, killing every runner, when its
worker closes the socket or dies.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
from typing import Any

from service.runners import limits, protocol

REAP_SECONDS = 0.5
RUNNER_NICENESS = 5  # below the worker (itself below the master and the plane)
ZYGOTE_NAME = "sg-zygote"
RUNNER_NAME = "sg-runner"  # what ps shows (comm: 15 characters at most)


class Zygote:
    def __init__(self, sock: socket.socket, config: dict[str, Any]) -> None:
        self.sock = sock
        self.reader = protocol.Reader(sock)
        self.config = config
        user = config.get("runner_user")
        self.user = limits.RunnerUser(**user) if user else None
        self.runners: set[int] = set()

    def loop(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock], [], [], REAP_SECONDS)
            if ready or self.reader.pending():
                try:
                    message = self.reader.message()
                except (protocol.ProtocolError, OSError):
                    return  # the worker is gone
                if isinstance(message, dict):
                    self.handle(message)
            self.reap()

    def handle(self, message: dict[str, Any]) -> None:
        if message.get("t") == "spawn":
            self.spawn(message)
        elif message.get("t") == "kill":
            pid = message.get("pid")
            if pid in self.runners:  # never a pid that is not (or no longer) ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

    def spawn(self, message: dict[str, Any]) -> None:
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the runner
            parent_end.close()
            self.sock.close()
            code = 0
            try:
                become_runner(child_end, message, self.config, self.user)
            except BaseException:
                code = 1
            os._exit(code)
        child_end.close()
        self.runners.add(pid)
        socket.send_fds(
            self.sock, [protocol.encode({"t": "spawned", "pid": pid})], [parent_end.fileno()]
        )
        parent_end.close()

    def reap(self) -> None:
        """Reap ended children; kill what is left of a dead runner's process group, and
        any orphan that was handed to us."""
        for pid in limits.ended_children():
            if pid in self.runners:
                self.runners.discard(pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        for pid in _children() - self.runners:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for pid in self.runners:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for pid in _children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children() -> set[int]:
    """This process's children, adopted orphans included."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                found.update(int(pid) for pid in f.read().split())
    return found


def become_runner(
    sock: socket.socket,
    message: dict[str, Any],
    config: dict[str, Any],
    user: limits.RunnerUser | None,
) -> None:
    """In the forked child: its own process group, its limits and user, then the script."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    os.setsid()  # its own process group: a deadline kills the runner and its children
    os.nice(RUNNER_NICENESS)  # a script spinning on every core still leaves the CPU to
    # its worker's other threads: health, routes and other scripts' calls answer
    limits.confine(int(message["memory"]), user)
    limits.die_with_parent(signal.SIGKILL)
    limits.name_process(RUNNER_NAME)
    from service.runners.runner import serve

    serve(sock, message["path"], config["scripts_dir"], config["log_level"], config["max_body"])


def main() -> None:
    # No PDEATHSIG here: it follows the thread that started us, not the process. The
    # worker's end of the socket closes when the worker exits however it exits; then the
    # loop ends and every runner is killed.
    sock = socket.socket(fileno=int(sys.argv[1]))
    reader = protocol.Reader(sock)
    config = reader.message()
    assert isinstance(config, dict)
    limits.name_process(ZYGOTE_NAME)
    zygote = Zygote(sock, config)
    zygote.reader = reader
    limits.adopt_orphans()
    os.umask(0o022)  # files scripts write are as they would be anywhere else
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # What every runner imports, once; frozen so forked runners share these pages.
    import service.runners.runner  # noqa: F401

    gc.freeze()
    socket_ready = protocol.encode({"t": "ready", "pid": os.getpid()})
    sock.sendall(socket_ready)
    try:
        zygote.loop()
    finally:
        zygote.stop()


if __name__ == "__main__":
    main()

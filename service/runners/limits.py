"""What a runner may use: memory, descriptors, processes, and whose rights it has.

Limits are the kernel's (setrlimit), set in the runner after fork, so a script can lower
them but never raise them. Memory is RLIMIT_DATA: the private writable memory (heap,
anonymous maps, thread stacks), which is what an allocation that would take the host down
grows, without the shared libraries' code that RLIMIT_AS would also count; a script over
it gets MemoryError.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import resource
import signal
from collections.abc import Iterator
from dataclasses import dataclass

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_MEMORY = 64 << 20  # below this the interpreter itself cannot run a script
OPEN_FILES = 1024  # per runner; a runner near it is replaced after its call
PROCESSES = 4096  # per runner user: RLIMIT_NPROC counts all its processes and threads
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36


def parse_size(text: str | int) -> int:
    """'512M', '2G', '1.5GiB' or a number of bytes -> bytes; ValueError names the form."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ValueError(f"{text!r} is not a size such as 512M or 2G")
        size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < MIN_MEMORY:
        raise ValueError(f"{text!r} is under the least a runner needs, 64M")
    return size


@dataclass(frozen=True)
class RunnerUser:
    """The unprivileged account runners run as (only when the server starts as root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> RunnerUser:
        """KeyError names the account when it does not exist."""
        if name.isdigit():
            return cls(name, int(name), int(name))
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid)


def _prctl(option: int, value: int | ctypes.c_char_p) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, value, 0, 0, 0)


def name_process(name: str) -> None:
    """What /proc/PID/comm, `ps -o comm` and `top` show (15 characters at most)."""
    _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Send `signum` to this process when the one that forked it exits (set after any
    setuid, which clears it)."""
    _prctl(_PR_SET_PDEATHSIG, signum)


def adopt_orphans() -> None:
    """Orphaned descendants become this process's children, so it can reap and kill them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def undumpable() -> None:
    """No other process of the same user may read this one's memory or descriptors
    through /proc (ptrace rules): a runner on the server's own uid cannot read the
    worker's keys."""
    _prctl(_PR_SET_DUMPABLE, 0)


def ended_children() -> Iterator[int]:
    """Reap every child that has ended (a zombie no more), yielding each pid."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid


def confine(memory: int, user: RunnerUser | None) -> None:
    """In a new runner, before the script is imported: limits, then the runner user."""
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if user is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (PROCESSES, PROCESSES))
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)

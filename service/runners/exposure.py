"""What the runner user can reach: said in one line each when `serve` starts.

Runners run as RUNNER_USER only when the server starts as root. That account must read
the scripts folder and nothing of the platform's; file modes decide both, and they are
the operator's, so they are checked by trying, as that user, in a short-lived child
process (ACLs and group rights included), never guessed from mode bits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from service.runners.limits import RunnerUser


def can_read(user: RunnerUser, path: Path) -> bool:
    """Could this user open the file (or list the folder)? Tried in a forked child."""
    pid = os.fork()
    if pid == 0:  # the child: the user's rights, one attempt, an exit code
        code = 1
        try:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            if path.is_dir():
                os.listdir(path)
            else:
                os.close(os.open(path, os.O_RDONLY))
            code = 0
        except BaseException:  # noqa: S110 - any failure means "cannot"
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def warnings(
    user: RunnerUser | None,
    is_root: bool,
    scripts_dir: Path,
    private: Iterable[tuple[str, Path | None]],
) -> list[str]:
    """One line per problem: runners as root, a scripts folder the runner user cannot read,
    a platform file (`private`: setting name and path) it can."""
    if user is None:
        if is_root:
            return [
                "WARNING: runners run as root: set RUNNER_USER to an unprivileged account so "
                "scripts cannot read the platform's files (README: Runner processes)"
            ]
        return []
    if not is_root:
        return []
    found = []
    if not can_read(user, scripts_dir):
        found.append(
            f"WARNING: RUNNER_USER {user.name} cannot read SCRIPTS_DIR {scripts_dir}: "
            "every script will fail to import"
        )
    for name, path in private:
        if path is not None and path.exists() and can_read(user, path):
            found.append(
                f"WARNING: RUNNER_USER {user.name} can read {name} {path}: scripts can too; "
                "make it readable by the server's own user only"
            )
    return found

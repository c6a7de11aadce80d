"""Which revision of the scripts is served, when a git-sync sidecar keeps the folder.

git-sync (v4) checks each commit of its branch out into `<root>/.worktrees/<hash>` and
points a symlink, `<root>/<link>`, at it, swapping the link atomically (a new link
renamed over the old one). SCRIPTS_DIR names that link, or a folder inside it, so the
platform resolves it again on every lookup rather than once at startup: a swap is seen
on the next request, in every worker, and one request resolves its script within one
worktree, never half in the old revision and half in the new.

A plain folder (no `.worktrees/<hash>` in its real path) has no revision: None.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

WORKTREES = ".worktrees"  # git-sync's folder of checkouts, one per commit hash
_HASH = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # SHA-1 or SHA-256


def served_root(scripts_dir: Path | str) -> str:
    """The real folder SCRIPTS_DIR leads to now, every symlink resolved."""
    return os.path.realpath(scripts_dir)


def revision_of(real_path: str) -> str | None:
    """The commit a real path was checked out at, read from git-sync's layout."""
    parts = real_path.split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i - 1] == WORKTREES and _HASH.fullmatch(parts[i]):
            return parts[i]
    return None


def current_revision(scripts_dir: Path | str) -> str | None:
    """The revision served now: the one the next request will get."""
    return revision_of(served_root(scripts_dir))


def root_of(path: str, scripts_dir: Path | str) -> str:
    """The real scripts folder that a located script's real path lies in.

    Today's folder, unless the link was swapped between finding the script and importing
    it: then the same folder in the worktree the path came from (git-sync keeps a stale
    worktree until --stale-worktree-timeout), so module names and helpers stay relative
    to the revision the script belongs to.
    """
    root = served_root(scripts_dir)
    if path.startswith(root + os.sep):
        return root
    now, then = revision_of(root), revision_of(path)
    if now and then and now != then:
        marker = f"{os.sep}{WORKTREES}{os.sep}"
        head, _, tail = root.rpartition(marker + now)
        old_root = head + marker + then + tail
        if path.startswith(old_root + os.sep):
            return old_root
    return root

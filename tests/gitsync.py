"""git-sync's layout, driven by git: one worktree per revision and an atomically swapped link.

What the git-sync sidecar does in a pod (kubernetes/git-sync v4, main.go: `worktreeFor`,
`publishSymlink`, `removeStaleWorktrees`), done with the git command line so tests can
move a running server from one revision to the next without a cluster or the image:
`<root>/.worktrees/<hash>` per commit, and `<root>/<link>` a relative symlink to it,
replaced by renaming a new link over it. `Upstream` is the repository commits are pushed
to; each `GitSync` is one pod's copy, and `Sidecar` its sync loop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import threading
import time
from pathlib import Path

GIT = shutil.which("git") or "/usr/bin/git"
# Deterministic, and blind to the user's own git configuration.
_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "scripts",
    "GIT_AUTHOR_EMAIL": "scripts@example.invalid",
    "GIT_COMMITTER_NAME": "scripts",
    "GIT_COMMITTER_EMAIL": "scripts@example.invalid",
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(
        [GIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class Upstream:
    """The scripts' repository, where commits land (a push, as far as git-sync can tell)."""

    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = path
        self.branch = branch
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", branch)

    def commit(self, files: dict[str, str | None], message: str = "scripts") -> str:
        """Write (or, for None, delete) files on the branch; the new commit's hash."""
        for rel, source in files.items():
            path = self.path / rel
            if source is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source).lstrip())
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


class GitSync:
    """One pod's sync root, as the sidecar keeps it in the pod's shared volume."""

    def __init__(self, root: Path, upstream: Upstream, link: str = "scripts") -> None:
        self.root = root
        self.upstream = upstream
        self.link = root / link
        self.published: list[str] = []  # revisions whose worktree exists, oldest first
        root.mkdir(parents=True)
        git(root, "init", "-q")
        git(root, "remote", "add", "origin", str(upstream.path))

    def worktree(self, revision: str) -> Path:
        return self.root / ".worktrees" / revision

    def current(self) -> str | None:
        return os.readlink(self.link).rpartition("/")[2] if self.link.is_symlink() else None

    def sync(self, keep_stale: int = 1) -> str:
        """One sync of git-sync: fetch the branch, check its head out into a worktree of its
        own, swap the link to it, then remove all but `keep_stale` older worktrees (what
        --stale-worktree-timeout keeps for calls in flight). Returns the revision."""
        git(self.root, "fetch", "-q", "origin", self.upstream.branch)
        revision = git(self.root, "rev-parse", "FETCH_HEAD")
        if revision == self.current():
            return revision
        git(self.root, "worktree", "add", "-q", "--detach", str(self.worktree(revision)), revision)
        tmp = self.root / "tmp-link"
        os.symlink(os.path.relpath(self.worktree(revision), self.root), tmp)
        os.rename(tmp, self.link)  # atomic: a reader sees the old link or the new one
        self.published.append(revision)
        while len(self.published) > keep_stale + 1:
            stale = self.published.pop(0)
            git(self.root, "worktree", "remove", "--force", str(self.worktree(stale)))
        return revision


class Sidecar:
    """git-sync's loop for one pod: a sync every `period`, from a phase of its own (pods
    do not sync in step). Records when its link moved to each revision; bounded."""

    def __init__(self, sync: GitSync, period: float, phase: float, max_syncs: int) -> None:
        self.sync = sync
        self.period = period
        self.phase = phase
        self.max_syncs = max_syncs
        self.swapped: dict[str, float] = {}  # revision -> time.monotonic() of the swap
        self.git_work: dict[str, float] = {}  # revision -> seconds its sync took
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"git-sync {sync.root.name}")

    def _run(self) -> None:
        if self._stop.wait(self.phase):
            return
        for _ in range(self.max_syncs):
            before, began = self.sync.current(), time.monotonic()
            try:
                revision = self.sync.sync()
            except RuntimeError as exc:  # git-sync logs and tries again next period
                self.errors.append(str(exc))
            else:
                if revision != before:
                    self.swapped[revision] = time.monotonic()
                    self.git_work[revision] = self.swapped[revision] - began
            if self._stop.wait(self.period):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

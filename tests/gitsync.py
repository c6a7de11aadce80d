"""git-sync's layout, driven by git: one worktree per revision and an atomically swapped link.

What the git-sync sidecar does in a pod (kubernetes/git-sync v4, main.go: `worktreeFor`,
`publishSymlink`, `removeStaleWorktrees`), done with the git command line so tests can
move a running server from one revision to the next without a cluster or the image:
`<root>/.worktrees/<hash>` per commit, and `<root>/<link>` a relative symlink to it,
replaced by renaming a new link over it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
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


class GitSync:
    """An upstream repository (`origin`, where commits are made) and a sync root where
    git-sync's layout is kept, as the sidecar keeps it in the pod's shared volume."""

    def __init__(self, base: Path, link: str = "scripts", branch: str = "main") -> None:
        self.origin = base / "origin"
        self.root = base / "git"
        self.link = self.root / link
        self.branch = branch
        self.published: list[str] = []  # revisions whose worktree exists, oldest first
        self.origin.mkdir(parents=True)
        self.root.mkdir(parents=True)
        git(self.origin, "init", "-q", "-b", branch)
        git(self.root, "init", "-q")
        git(self.root, "remote", "add", "origin", str(self.origin))

    def commit(self, files: dict[str, str | None], message: str = "scripts") -> str:
        """Write (or, for None, delete) files in the upstream branch; the new commit's hash."""
        for rel, source in files.items():
            path = self.origin / rel
            if source is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source).lstrip())
        git(self.origin, "add", "-A")
        git(self.origin, "commit", "-q", "-m", message)
        return git(self.origin, "rev-parse", "HEAD")

    def worktree(self, revision: str) -> Path:
        return self.root / ".worktrees" / revision

    def current(self) -> str | None:
        return os.readlink(self.link).rpartition("/")[2] if self.link.is_symlink() else None

    def sync(self, keep_stale: int = 1) -> str:
        """One sync of git-sync: fetch the branch, check its head out into a worktree of its
        own, swap the link to it, then remove all but `keep_stale` older worktrees (what
        --stale-worktree-timeout keeps for in-flight calls). Returns the new revision."""
        git(self.root, "fetch", "-q", "origin", self.branch)
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

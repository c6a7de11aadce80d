"""Scripts' own secrets: files in SECRETS_DIR, read through one helper, kept out of logs.

The way containers get secrets (Docker and Kubernetes mount each as a file, by default
under /run/secrets), so nothing secret has to live in the environment:

    from scriptgate import secret

    def main(request):
        password = secret("db_password")   # $SECRETS_DIR/db_password, trailing newline cut

Every value handed out is remembered by the worker, and the platform's log lines write
"***" wherever one appears (a script logging it, an exception message quoting it).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

REDACTED = "***"
MIN_REDACTED_LENGTH = 4  # shorter values would blank out ordinary words in every line
MAX_NAME_LENGTH = 255


class SecretNotFound(LookupError):
    """No readable file of that name in SECRETS_DIR (the message names the folder)."""


class Secrets:
    """One app's secrets folder, and every value read from it so far."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._forms: tuple[str, ...] = ()

    def read(self, name: str, zone: str | None = None) -> str:
        """The secret's text, the zone's own (`SECRETS_DIR/<zone>/<name>`) before a shared
        one (`SECRETS_DIR/<name>`); raises SecretNotFound, or ValueError for a name that
        is not a plain file name (no folders, nothing hidden)."""
        if (
            not name
            or len(name) > MAX_NAME_LENGTH
            or name[0] == "."
            or any(c in name for c in "/\\\x00")
        ):
            raise ValueError(f"{name!r} is not a secret's file name")
        places = [self.directory / name]
        if zone is not None:
            places.insert(0, self.directory / zone / name)
        for place in places:
            try:
                value = place.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError):
                continue
            self.remember(value)
            return value
        raise SecretNotFound(f"no secret {name!r} in {self.directory}")

    def remember(self, value: str) -> None:
        """Redact this value from every later log line of this process."""
        if len(value) < MIN_REDACTED_LENGTH:
            return
        # A JSON log line writes the value escaped (quotes, backslashes, non-ASCII).
        forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        with self._lock:
            merged = set(self._forms) | forms
            self._forms = tuple(sorted(merged, key=len, reverse=True))  # longest first

    def scrub(self, line: str) -> str:
        for form in self._forms:
            if form in line:
                line = line.replace(form, REDACTED)
        return line


def secret(name: str) -> str:
    """Read a secret of the script's zone (`SECRETS_DIR/<zone>/<name>`) or a shared one
    (`SECRETS_DIR/<name>`). In a runner the worker reads it and answers: the runner
    cannot read the secrets folder, nor another zone's secrets."""
    from flask import current_app

    secrets: Secrets = current_app.extensions["scriptgate"].secrets
    return secrets.read(name)

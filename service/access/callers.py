"""The callers of one app: their keys (reloaded on change), and what each key may still do.

`access.authorize` says which key is calling; `Callers.admit` then applies the key's
own limits (expiry, rate limit) and notes its use, and `hand_over` tells the script who
called while taking the key itself out of its reach.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Request, Response, jsonify

from service.access.keys import ApiKey, Caller, Keyring, env_keys
from service.access.keys_file import KeysFile
from service.access.usage import Usage
from service.config import Settings
from service.http.errors import AccessDenied, TooManyRequests, Unavailable
from service.small import iso_z

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

# What a script finds in request.environ.
CALLER_ENVIRON_KEY = "scriptgate.caller"
OWNER_ENVIRON_KEY = "scriptgate.caller_owner"
# And in a job: its id and which run this is (1, then 2... for its retries).
JOB_ID_ENVIRON_KEY = "scriptgate.job_id"
ATTEMPT_ENVIRON_KEY = "scriptgate.job_attempt"
# The platform's key headers never reach a script: it learns the caller's id instead.
KEY_HEADERS_ENVIRON = ("HTTP_X_API_KEY", "HTTP_X_ADMIN_KEY")


class Callers:
    """The keys every request is checked against, and the usage store they share."""

    def __init__(self, settings: Settings, run_dir: Path, log: logging.Logger) -> None:
        self.log = log
        fixed = env_keys(settings.api_keys, settings.admin_keys)  # digests, never secrets
        self.keys = KeysFile(settings.keys_file, fixed, log)
        self.usage = Usage(run_dir / "usage.sqlite3", settings.redis_url)

    def keyring(self) -> Keyring:
        return self.keys.keyring()

    def admit(self, caller: Caller) -> None:
        """The key's own limits: 401 once expired, 429 over its rate limit.

        A rate limit store that does not answer refuses the call (503) rather than
        let it through unlimited.
        """
        key = caller.key
        if key is None:
            return
        if key.expired():
            raise AccessDenied("expired")
        self._touch(key)
        if key.rate_limit is None:
            return
        try:
            retry_after = self.usage.hit(key.id, key.rate_limit)
        except Exception as exc:
            self.log.error("rate limit store failed: %s: %s", type(exc).__name__, exc)
            raise Unavailable("rate_limit_store") from None
        if retry_after is not None:
            raise TooManyRequests("rate_limit", retry_after)

    def _touch(self, key: ApiKey) -> None:
        try:
            self.usage.touch(key.id)
        except Exception as exc:  # last use is for people to read: never fail a call on it
            self.log.warning("last use of key %s not recorded: %s", key.id, exc)

    def listing(self) -> list[dict[str, Any]]:
        """Every key as /_platform/keys shows it: never a secret, nor its digest."""
        try:
            last = self.usage.last_uses()
        except Exception as exc:
            self.log.warning("last use not readable: %s", exc)
            last = {}
        now = dt.datetime.now(dt.timezone.utc)
        return [
            {
                "id": key.id,
                "owner": key.owner,
                "source": key.source,
                "scopes": [str(scope) for scope in key.scopes],
                "methods": sorted(key.methods) if key.methods is not None else None,
                "expires": _iso(key.expires),
                "expired": key.expired(now),
                "rate_limit": key.rate_limit,
                "last_used": _iso(_moment(last.get(key.id))),
            }
            for key in sorted(self.keyring().keys, key=lambda k: k.id)
        ]


def hand_over(caller: Caller, environ: dict[str, Any]) -> None:
    """Before the script runs: who called goes in, the key header goes out."""
    environ[CALLER_ENVIRON_KEY] = caller.id
    environ[OWNER_ENVIRON_KEY] = caller.key.owner if caller.key is not None else None
    for name in KEY_HEADERS_ENVIRON:
        environ.pop(name, None)


def keys_view(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """GET /_platform/keys: ids, owners, scopes, expiry and last use of every key."""
    response = jsonify(keys=rt.callers.listing())
    response.headers["Cache-Control"] = "no-store"
    return response


def _moment(timestamp: float | None) -> dt.datetime | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)


def _iso(moment: dt.datetime | None) -> str | None:
    return iso_z(moment, "seconds")

"""What a script can import from Scriptgate: one name to guess, `scriptgate`.

    from scriptgate import progress, secret

    def main(request):
        for n, row in enumerate(rows, 1):
            ...
            progress(n / len(rows), f"{n} of {len(rows)} rows")
        return {"password_length": len(secret("db_password"))}

`progress(fraction, message)` reports how far a job has got: it is stored on the job's
record (`progress`) and sent to whoever follows its events. Outside a job (a synchronous
call, a script run by hand or in a unit test) it does nothing. `secret(name)` is
`service.scripts.secrets.secret` (`service.script_secrets` for older scripts), under its
shorter name.
"""

from __future__ import annotations

import math

from service.scripts.secrets import SecretNotFound, secret

__all__ = ["SecretNotFound", "progress", "secret"]

MAX_MESSAGE = 200  # characters of a progress message kept


def progress(fraction: float, message: str = "") -> None:
    """Say how far the running job has got: `fraction` from 0 to 1, and a short text.

    Raises ValueError for a fraction outside 0..1 (or not a number): a script's mistake
    should be seen where it is made, not as a progress bar that is silently wrong.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(f"progress fraction must be a number from 0 to 1, not {fraction!r}")
    if not math.isfinite(fraction) or not 0 <= fraction <= 1:
        raise ValueError(f"progress fraction must be from 0 to 1, not {fraction!r}")
    if not isinstance(message, str):
        raise ValueError(f"progress message must be text, not {type(message).__name__}")
    try:
        from flask import current_app

        extension = current_app.extensions.get("scriptgate")
    except (ImportError, RuntimeError):  # no app: not run by Scriptgate
        return
    report = getattr(extension, "progress", None)
    if report is not None:
        report(float(fraction), message[:MAX_MESSAGE])

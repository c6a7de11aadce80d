"""What can be wrong with a script request, said without HTTP: the HTTP layer
(http.errors.refusal_of) turns each into its answer, so loading never imports it."""

from __future__ import annotations

from typing import Any


class ScriptProblem(Exception):
    """A request for a script that cannot be served as asked."""


class NoScript(ScriptProblem, LookupError):
    """Unknown, private or escaping path. The message (the path) is for a debugger; the
    client's 404 never says which, or what path."""


class BadParameters(ScriptProblem, ValueError):
    """Declared parameters that do not fit: one entry per field (in, name, message, type)."""

    def __init__(self, fields: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(fields)} invalid parameter(s)")
        self.fields = fields

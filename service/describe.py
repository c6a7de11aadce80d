"""Route details for /_platform/routes?detail=1, read without running the script.

The summary and METHODS come from the source's syntax tree (literals only), so listing
routes never executes script code and works even for a script that fails at import.
"""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path
from typing import Any

from service.loader import DEFAULT_METHODS, stamp
from service.resolve import zone_dir


def url_for_script(zone: str, path: str) -> str:
    return f"/{path}" if zone == "root" else f"/{zone}/{path}"


def describe_route(scripts_dir: Path, zone: str, path: str) -> dict[str, Any]:
    real = os.path.join(zone_dir(scripts_dir, zone), path)
    methods, summary = _static_info(stamp(real))
    return {"path": path, "url": url_for_script(zone, path), "methods": methods, "summary": summary}


@functools.lru_cache(maxsize=4096)
def _static_info(file_stamp: tuple | None) -> tuple[list[str], str]:
    """(methods, summary); keyed by the file's stamp so an edit is seen at once."""
    default = sorted(DEFAULT_METHODS)
    if file_stamp is None:
        return default, ""
    try:
        with open(file_stamp[0], "rb") as source:
            tree = ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return default, ""
    doc = (ast.get_docstring(tree) or "").strip()
    summary = doc.splitlines()[0].strip() if doc else ""
    methods = default
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "METHODS" for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, list | tuple) and all(isinstance(m, str) for m in value):
                found = {m.upper() for m in value}
                if "GET" in found:
                    found.add("HEAD")
                methods = sorted(found)
    return methods, summary

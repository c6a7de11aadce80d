"""Importing one script inside its runner, and what the runner tells the worker about it.

The one reader of a script's settings (METHODS, TIMEOUT, CONCURRENCY, ASYNC, JOB_TIMEOUT,
MEMORY_LIMIT, RETRIES, RETRY_DELAY) and of its handler's declared parameters. The worker
never imports a script: it gets this description, as JSON, from the runner that imported
it.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from service.runners.limits import parse_size
from service.scripts.importer import HelperFinder, SourceLoader
from service.scripts.params import DeclarationError, Params, read_params
from service.small import method_names

DEFAULT_METHODS = ("GET", "HEAD", "POST")
LIB_DIR = "_lib"
HANDLER_NAMES = ("handle", "main")  # handle wins if both exist
REQUIREMENTS_FILE = "requirements.txt"  # in the scripts folder: packages scripts import
MISSING = "missing"  # the state of a script deleted before its runner could import it


class ScriptLoadError(Exception):
    """A script that cannot be imported or has no usable handler; the cause is chained.

    `state` is what routes and `scriptgate check` show: import_error or no_handler.
    """

    def __init__(self, message: str, state: str = "import_error") -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class Imported:
    module: ModuleType
    handler: Callable[..., Any]
    params: Params | None
    description: dict[str, Any]  # what the worker learns: see `describe`


def _methods(module: ModuleType) -> list[str]:
    raw = getattr(module, "METHODS", None)
    if raw is None:
        return list(DEFAULT_METHODS)
    if isinstance(raw, str) or not all(isinstance(m, str) for m in raw):
        raise ScriptLoadError("METHODS must be a list of method names")
    return sorted(method_names(raw))


def _seconds(module: ModuleType, name: str) -> float | None:
    raw = getattr(module, name, None)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ScriptLoadError(f"{name} must be a number of seconds")
    if raw <= 0:
        raise ScriptLoadError(f"{name} must be greater than 0")
    return float(raw)


def _flag(module: ModuleType, name: str) -> bool:
    raw = getattr(module, name, False)
    if not isinstance(raw, bool):
        raise ScriptLoadError(f"{name} must be True or False")
    return raw


def _concurrency(module: ModuleType) -> int | None:
    raw = getattr(module, "CONCURRENCY", None)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ScriptLoadError("CONCURRENCY must be a whole number of at least 1")
    return raw


MAX_RETRIES = 10


def _retries(module: ModuleType) -> int:
    raw = getattr(module, "RETRIES", 0)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_RETRIES:
        raise ScriptLoadError(f"RETRIES must be a whole number from 0 to {MAX_RETRIES}")
    return raw


def _memory(module: ModuleType) -> int | None:
    raw = getattr(module, "MEMORY_LIMIT", None)
    if raw is None:
        return None
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise ScriptLoadError(f"MEMORY_LIMIT: {exc}") from None


def _docstring(module: ModuleType) -> tuple[str, str]:
    """(summary, description): the module docstring's first line, and the rest."""
    summary, _, rest = inspect.cleandoc(module.__doc__ or "").partition("\n")
    return summary.strip(), rest.strip()


def import_script(path: str, root: str) -> Imported:
    """Import a script with its helpers from its own folder and `_lib/`; raises
    ScriptLoadError with the cause chained."""
    name = "scriptgate_script." + os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    finder = HelperFinder([os.path.dirname(path), os.path.join(root, LIB_DIR)], root)
    before = set(sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        spec = importlib.util.spec_from_file_location(name, path, loader=SourceLoader(name, path))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: the script's fault
            sys.modules.pop(name, None)
            if isinstance(exc, FileNotFoundError) and exc.filename == path:
                raise ScriptLoadError("deleted", MISSING) from None  # as if it never existed
            raise ScriptLoadError(f"import failed: {type(exc).__name__}") from exc
    finally:
        helpers = _helper_files(set(sys.modules) - before - {name}, root)
    handler = next(
        (getattr(module, n) for n in HANDLER_NAMES if callable(getattr(module, n, None))), None
    )
    if handler is None:
        raise ScriptLoadError("no handle(request) or main(request) function", "no_handler")
    try:
        params = read_params(handler)
    except DeclarationError as exc:
        raise ScriptLoadError(str(exc)) from None
    summary, description = _docstring(module)
    return Imported(
        module,
        handler,
        params,
        {
            "methods": _methods(module),
            "timeout": _seconds(module, "TIMEOUT"),
            "concurrency": _concurrency(module),
            "summary": summary,
            "description": description,
            "async": _flag(module, "ASYNC"),
            "job_timeout": _seconds(module, "JOB_TIMEOUT"),
            "memory_limit": _memory(module),
            "retries": _retries(module),
            "retry_delay": _seconds(module, "RETRY_DELAY"),
            "helpers": helpers,
            "params": None if params is None else params.to_json(),
        },
    )


def _helper_files(new_names: set[str], root: str) -> list[str]:
    """The files of helper modules a script imported from the scripts folder: the worker
    re-imports the script when one of them changes."""
    files = set()
    for mod_name in new_names:
        origin = getattr(sys.modules.get(mod_name), "__file__", None) or ""
        if origin.startswith(root + os.sep):
            files.add(origin)
    return sorted(files)


def describe_error(exc: ScriptLoadError, path: str, scripts_dir: str) -> str:
    """The cause's type and message, and its line in the script: never a stack, never
    a path outside the scripts folder. A missing package says where packages go."""
    import re

    cause = exc.__cause__
    if cause is None:
        return str(exc)
    where = ""
    if isinstance(cause, SyntaxError) and cause.lineno:
        where = f" (line {cause.lineno})"
    else:
        lines = [f.lineno for f in traceback.extract_tb(cause.__traceback__) if f.filename == path]
        if lines:
            where = f" (line {lines[-1]})"
    absolute = re.compile(r"(?<![\w.])/[^\s'\"()]+")  # a library's file in an ImportError
    message = absolute.sub(
        lambda m: "…/" + m.group(0).rstrip("/").rpartition("/")[2],
        str(cause).replace(scripts_dir + "/", ""),
    )
    hint = ""
    if isinstance(cause, ModuleNotFoundError) and cause.name and not cause.name.startswith("_"):
        package = cause.name.partition(".")[0]
        hint = f": add {package!r} to {REQUIREMENTS_FILE} in the scripts folder and install it"
    return f"{type(cause).__name__}: {message}{where}{hint}"

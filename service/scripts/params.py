"""Parameters a script declares on its handler, checked before the script runs.

    def main(request, name: str = "Guest", count: Annotated[int, "how many"] = 1):

Every parameter after `request` is a query parameter, converted to its type (`list[int]`
reads a repeated one); a parameter typed as a dataclass, a TypedDict, a pydantic model or
a dict is the JSON body. Descriptions come from `Annotated[type, "text"]` or the handler
docstring's `Args:` section; a body class's field docstrings describe its fields. A call
that does not fit gets 400 with one entry per field and never reaches the script;
`main(request)` declares nothing and costs nothing.

Conversion, nested types and JSON Schema are pydantic's: this module only turns a
signature into a pydantic model and a request into that model's input.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

from flask import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from typing_extensions import is_typeddict

from service.scripts.problems import BadParameters

QUERY, BODY = "query", "body"
MAX_FIELD_ERRORS = 50
_MISSING = object()
_ARGS_HEADINGS = ("args:", "arguments:", "parameters:", "params:")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_MANY = (list, tuple, set, frozenset)


class DeclarationError(Exception):
    """A handler signature the platform cannot serve; the loader reports it as import_error."""


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # QUERY or BODY
    required: bool
    many: bool  # a query parameter read with getlist
    description: str


@dataclass(frozen=True)
class Params:
    """A handler's declared parameters, the model that checks them, and its JSON Schema."""

    query: tuple[Param, ...]
    body: Param | None
    model: type[BaseModel] | None  # None in a worker: only the script's runner checks
    schema: dict[str, Any]  # the model's JSON Schema; refs point into its own "$defs"

    @property
    def all(self) -> tuple[Param, ...]:
        return (*self.query, self.body) if self.body else self.query

    def to_json(self) -> dict[str, Any]:
        """What a runner tells the worker (routes, the API document) about them."""
        return {
            "query": [dataclasses.asdict(p) for p in self.query],
            "body": dataclasses.asdict(self.body) if self.body else None,
            "schema": self.schema,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Params:
        body = data.get("body")
        return cls(
            tuple(Param(**p) for p in data["query"]),
            Param(**body) if body else None,
            None,
            data["schema"],
        )


def read_params(handler: Callable[..., Any]) -> Params | None:
    """The parameters after `request`, or None when the handler takes the request alone
    (or is a callable whose signature Python cannot tell: it is called as before)."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return None
    declared = list(signature.parameters.values())[1:]
    declared = [p for p in declared if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not declared:
        return None
    hints = _declared_hints(handler, declared)
    docs = _docstring_args(handler.__doc__)
    params, fields = [], {}
    for p in declared:
        if p.kind is p.POSITIONAL_ONLY:
            raise DeclarationError(f"parameter {p.name!r} is positional-only")
        annotation = hints.get(p.name, _implied_type(p.default))
        base = _unwrap(annotation)
        where = BODY if _is_body(base) else QUERY
        required = p.default is p.empty
        description = _annotated_text(annotation) or docs.get(p.name, "")
        many = where == QUERY and typing.get_origin(base) in _MANY
        params.append(Param(p.name, where, required, many, description))
        default = ... if required else p.default
        extra = {"description": description} if description else {}
        fields[p.name] = (annotation, Field(default, **extra))
    bodies = [p for p in params if p.where == BODY]
    if len(bodies) > 1:
        raise DeclarationError(f"only one JSON body parameter: {', '.join(b.name for b in bodies)}")
    try:
        # Any name will do: `model_id` (no reserved prefix), `fields` or `json` (a field
        # shadowing a BaseModel method is read with getattr, which gives the value).
        config = ConfigDict(use_attribute_docstrings=True, protected_namespaces=())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Field name .* shadows an attribute", UserWarning)
            model = create_model("Parameters", __config__=config, **fields)  # type: ignore[call-overload]
        schema = model.model_json_schema()
    except Exception as exc:  # pydantic's messages name the field and the type
        first_line = str(exc).strip().splitlines()[0]
        raise DeclarationError(f"parameters: {first_line}") from None
    query = tuple(p for p in params if p.where == QUERY)
    return Params(query, bodies[0] if bodies else None, model, schema)


def _declared_hints(handler: Callable[..., Any], declared: list[inspect.Parameter]) -> dict:
    """The declared parameters' annotations, evaluated (`from __future__ import annotations`
    makes them strings). Only theirs: `request: Request` may name a type imported for type
    checkers only, and must not break the script."""
    raw = types.SimpleNamespace(
        __annotations__={p.name: p.annotation for p in declared if p.annotation is not p.empty}
    )
    module_globals = getattr(inspect.unwrap(handler), "__globals__", {})
    try:
        return typing.get_type_hints(raw, globalns=module_globals, include_extras=True)
    except Exception as exc:  # NameError, SyntaxError in a string annotation...
        raise DeclarationError(f"cannot read the parameters' types: {exc}") from None


def arguments(params: Params | None, req: Request) -> dict[str, Any]:
    """The handler's keyword arguments for this request; raises BadParameters (a 400)."""
    if params is None:
        return {}
    data: dict[str, Any] = {}
    for p in params.query:
        if p.name in req.args:
            data[p.name] = req.args.getlist(p.name) if p.many else req.args[p.name]
    problems: list[dict[str, str]] = []
    unreadable = ""  # a body that could not be read is reported once, not also as missing
    if params.body is not None:
        body = _json_body(req, problems)
        if body is not _MISSING:
            data[params.body.name] = body
        elif problems:
            unreadable = params.body.name
    try:
        assert params.model is not None, "parameters are checked in the script's runner"
        model = params.model.model_validate(data)
    except ValidationError as exc:
        errors = [e for e in exc.errors(include_url=False) if e["loc"][:1] != (unreadable,)]
        problems += [_field_error(params, e) for e in errors]
    if problems:
        raise BadParameters(problems[:MAX_FIELD_ERRORS])
    return {p.name: getattr(model, p.name) for p in params.all}


def _json_body(req: Request, problems: list[dict[str, str]]) -> Any:
    data = req.get_data(cache=True)
    if not data:
        return _MISSING
    if not req.is_json:
        problems.append(
            _problem(BODY, "", "send the body as JSON (Content-Type: application/json)")
        )
        return _MISSING
    try:
        return json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError included
        problems.append(_problem(BODY, "", f"the body is not valid JSON ({exc})"))
        return _MISSING


def _field_error(params: Params, error: Any) -> dict[str, str]:
    """pydantic's error as the caller reads it: never the input itself (it may be a secret)."""
    loc = error["loc"]
    if params.body is not None and loc and loc[0] == params.body.name:
        name = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
        if not name and error["type"] == "missing":
            return _problem(BODY, "", "a JSON body is required", "missing")
        return _problem(BODY, name.lstrip("."), error["msg"], error["type"])
    return _problem(QUERY, str(loc[0]) if loc else "", error["msg"], error["type"])


def _problem(where: str, name: str, message: str, kind: str = "invalid") -> dict[str, str]:
    return {"in": where, "name": name, "message": message, "type": kind}


def _implied_type(default: Any) -> Any:
    """No annotation: the default's type (`count=1` is an int), else a string."""
    if default is inspect.Parameter.empty:
        return str
    if default is None:
        return str | None
    return type(default) if isinstance(default, str | int | float | bool) else Any


def _unwrap(annotation: Any) -> Any:
    """The type under `Annotated[...]` and `X | None`."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return _unwrap(rest[0])
    return annotation


def _is_body(base: Any) -> bool:
    if dataclasses.is_dataclass(base) or is_typeddict(base):
        return True
    if isinstance(base, type) and issubclass(base, BaseModel | dict):
        return True
    return typing.get_origin(base) is dict


def _annotated_text(annotation: Any) -> str:
    """`Annotated[int, "text"]`, or a pydantic `Field(description=...)` in it."""
    if typing.get_origin(annotation) is not Annotated:
        return ""
    texts = [m if isinstance(m, str) else m.description for m in annotation.__metadata__]
    return " ".join(t for t in texts if isinstance(t, str) and t)


def _docstring_args(doc: str | None) -> dict[str, str]:
    """`name: text` lines under an `Args:` heading (Google style), continuation lines joined."""
    found: dict[str, str] = {}
    inside, current = False, ""
    for line in inspect.cleandoc(doc or "").splitlines():
        if line.strip().lower() in _ARGS_HEADINGS:
            inside, current = True, ""
            continue
        if not inside:
            continue
        match = _ARG_LINE.match(line)
        if match:
            current = match[1]
            found[current] = match[2].strip()
        elif current and line.startswith((" ", "\t")) and line.strip():
            found[current] = f"{found[current]} {line.strip()}".strip()
        else:
            inside = False
    return found

"""Declared parameters: converted and checked before the script runs, 400 with the fields."""

from __future__ import annotations

import pytest

from tests.unit.conftest import API, log_records, write_scripts
from tests.unit.test_pipeline import metric_value

SCRIPTS = {
    "api/typed.py": '''
        """Typed query parameters."""
        from datetime import date
        from typing import Annotated, Literal
        METHODS = ["GET", "POST"]
        def main(request, name: str, count: int = 1, ratio: float = 0.5, loud: bool = False,
                 ids: list[int] = [], mode: Literal["a", "b"] = "a", day: date | None = None,
                 note: Annotated[str, "free text"] = "", untyped="x"):
            return {"name": name, "count": count, "ratio": ratio, "loud": loud, "ids": ids,
                    "mode": mode, "day": day and day.isoformat(), "note": note,
                    "untyped": untyped}
    ''',
    "api/body.py": '''
        """A JSON body: a dataclass holding TypedDicts."""
        from dataclasses import dataclass
        from typing_extensions import TypedDict
        METHODS = ["POST"]
        class Line(TypedDict):
            sku: str
            quantity: int
        @dataclass
        class Order:
            customer: str
            items: list[Line]
        def main(request, order: Order, dry_run: bool = False):
            assert isinstance(order, Order) and isinstance(order.items[0], dict)
            return {"customer": order.customer, "n": len(order.items), "dry_run": dry_run}
    ''',
    "api/maybe_body.py": """
        from typing_extensions import TypedDict
        class Options(TypedDict):
            limit: int
        def main(request, options: Options | None = None):
            return {"options": options}
    """,
    "api/plain.py": """
        def main(request):
            return {"args": request.args.to_dict()}
    """,
}

DEFAULTS = {"count": 1, "ratio": 0.5, "loud": False, "ids": [], "mode": "a", "day": None,
            "note": "", "untyped": "x"}  # fmt: skip

# query string -> what the handler gets (beyond the defaults)
VALID = [
    ("name=Rico", {"name": "Rico"}),
    ("name=Rico&count=3&ratio=2.5", {"name": "Rico", "count": 3, "ratio": 2.5}),
    ("name=R&loud=true", {"name": "R", "loud": True}),
    ("name=R&loud=1", {"name": "R", "loud": True}),
    ("name=R&loud=no", {"name": "R", "loud": False}),
    ("name=R&ids=1&ids=2", {"name": "R", "ids": [1, 2]}),
    ("name=R&mode=b", {"name": "R", "mode": "b"}),
    ("name=R&day=2026-11-26", {"name": "R", "day": "2026-11-26"}),
    ("name=R&untyped=y&other=ignored", {"name": "R", "untyped": "y"}),
    ("name=R&count=1&count=9", {"name": "R", "count": 1}),  # as request.args.get: the first
]

# query string -> the fields at fault: (name, pydantic's type)
INVALID = [
    ("", [("name", "missing")]),
    ("name=R&count=lots", [("count", "int_parsing")]),
    ("name=R&count=1.5", [("count", "int_parsing")]),
    ("name=R&ratio=x", [("ratio", "float_parsing")]),
    ("name=R&loud=maybe", [("loud", "bool_parsing")]),
    ("name=R&ids=1&ids=x", [("ids", "int_parsing")]),
    ("name=R&mode=c", [("mode", "literal_error")]),
    ("name=R&day=yesterday", [("day", "date_from_datetime_parsing")]),
    ("count=x&mode=z", [("name", "missing"), ("count", "int_parsing"), ("mode", "literal_error")]),
]


@pytest.fixture
def client(make_app, scripts_dir):
    write_scripts(scripts_dir, SCRIPTS)
    return make_app().test_client()


@pytest.mark.parametrize(("query", "expected"), VALID)
def test_query_parameters_arrive_converted(client, query: str, expected: dict) -> None:
    response = client.get(f"/api/typed.py?{query}", headers=API)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {**DEFAULTS, **expected}


@pytest.mark.parametrize(("query", "expected"), INVALID)
def test_a_bad_query_is_400_naming_each_field(client, query: str, expected: list) -> None:
    response = client.get(f"/api/typed.py?{query}", headers=API)
    assert response.status_code == 400
    body = response.get_json()
    assert list(body) == ["error", "fields", "trace_id"]
    assert body["error"] == "invalid parameters"
    assert body["trace_id"] == response.headers["X-Trace-Id"]
    assert [(f["in"], f["name"], f["type"]) for f in body["fields"]] == [
        ("query", name, kind) for name, kind in expected
    ]
    assert all(f["message"] for f in body["fields"])


def test_a_bad_value_is_never_echoed_back(client) -> None:
    """A mistyped secret in a parameter must not come back in the error (or a log)."""
    response = client.get("/api/typed.py?name=R&count=hunter2-secret", headers=API)
    assert response.status_code == 400
    assert "hunter2" not in response.get_data(as_text=True)


BODIES = [
    # (body, content type, status, [(in, name, type)])
    ('{"customer": "Rico", "items": [{"sku": "A-1", "quantity": 2}]}', "application/json", 200,
     []),
    ('{"customer": "Rico", "items": [{"sku": "A-1"}]}', "application/json", 400,
     [("body", "items[0].quantity", "missing")]),
    ('{"customer": "Rico", "items": [{"sku": "A", "quantity": "x"}]}', "application/json", 400,
     [("body", "items[0].quantity", "int_parsing")]),
    ('{"items": []}', "application/json", 400, [("body", "customer", "missing")]),
    ('{"customer": 5, "items": "no"}', "application/json", 400,
     [("body", "customer", "string_type"), ("body", "items", "list_type")]),
    ("[1, 2]", "application/json", 400, [("body", "", "dataclass_type")]),
    ("", "application/json", 400, [("body", "", "missing")]),
    ("{not json", "application/json", 400, [("body", "", "invalid")]),
    ("customer=Rico", "application/x-www-form-urlencoded", 400, [("body", "", "invalid")]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "content_type", "status", "expected"), BODIES)
def test_json_body_is_checked_against_its_dataclass(client, body, content_type, status, expected):
    response = client.post("/api/body.py", headers=API, data=body, content_type=content_type)
    assert response.status_code == status, response.get_json()
    if status == 200:
        assert response.get_json() == {"customer": "Rico", "n": 1, "dry_run": False}
    else:
        fields = response.get_json()["fields"]
        assert [(f["in"], f["name"], f["type"]) for f in fields] == expected


def test_query_and_body_errors_come_together_in_declaration_order(client) -> None:
    response = client.post(
        "/api/body.py?dry_run=perhaps", headers=API, json={"customer": "Rico", "items": [{}]}
    )
    fields = response.get_json()["fields"]
    assert [(f["in"], f["name"]) for f in fields] == [
        ("body", "items[0].sku"),
        ("body", "items[0].quantity"),
        ("query", "dry_run"),
    ]


def test_an_optional_body_may_be_left_out(client) -> None:
    assert client.get("/api/maybe_body.py", headers=API).get_json() == {"options": None}
    sent = client.post("/api/maybe_body.py", headers=API, json={"limit": "7"})
    assert sent.get_json() == {"options": {"limit": 7}}


def test_main_request_alone_still_gets_every_query_argument(client) -> None:
    response = client.get("/api/plain.py?a=1&b=two", headers=API)
    assert response.get_json() == {"args": {"a": "1", "b": "two"}}


def test_a_400_never_reaches_the_script_and_is_not_a_script_error(
    make_app, scripts_dir, log_file
) -> None:
    runs = scripts_dir / "_runs.txt"
    write_scripts(scripts_dir, {"api/counted.py": f"""
        def main(request, n: int):
            with open({str(runs)!r}, "a") as f:
                f.write("x")
            return {{"n": n}}
    """})  # fmt: skip
    client = make_app().test_client()
    response = client.get("/api/counted.py?n=x", headers=API)
    assert response.status_code == 400
    assert not runs.exists()
    assert metric_value(client, "scriptgate_requests_total", zone="api", script="counted.py",
                        method="GET", status="400") == 1  # fmt: skip
    for kind in ("exception", "import", "timeout"):
        assert metric_value(client, "scriptgate_script_errors_total", zone="api",
                            script="counted.py", kind=kind) == 0  # fmt: skip
    levels = {r["level"] for r in log_records(log_file) if r.get("script") == "counted.py"}
    assert levels == {"INFO"}, "a caller's bad parameter is no ERROR in the log"
    assert client.get("/api/counted.py?n=4", headers=API).get_json() == {"n": 4}
    assert runs.read_text() == "x"


DECLARATIONS = {
    "two_bodies.py": (
        "from dataclasses import dataclass\n@dataclass\nclass A:\n    x: int\n"
        "def main(request, a: A, b: A):\n    return 1\n",
        "only one JSON body parameter: a, b",
    ),
    "positional.py": ("def main(request, n: int, /):\n    return 1\n", "positional-only"),
    "underscore.py": ("def main(request, _n: int = 1):\n    return 1\n", "parameters:"),
    "unknown_type.py": (
        "class Thing:\n    pass\ndef main(request, t: Thing = None):\n    return 1\n",
        "parameters:",
    ),
}


def test_a_declaration_the_platform_cannot_serve_is_an_import_error(make_app, scripts_dir):
    write_scripts(scripts_dir, {f"api/decl/{n}": src for n, (src, _) in DECLARATIONS.items()})
    client = make_app().test_client()
    detail = {e["path"]: e for e in client.get("/_platform/routes?detail=1").get_json()["api"]}
    for name, (_, message) in DECLARATIONS.items():
        entry = detail[f"decl/{name}"]
        assert entry["state"] == "import_error" and message in entry["error"], entry
        assert client.get(f"/api/decl/{name}", headers=API).status_code == 500


def test_routes_detail_names_the_declared_parameters(client) -> None:
    detail = {e["path"]: e for e in client.get("/_platform/routes?detail=1").get_json()["api"]}
    assert detail["body.py"]["parameters"] == {"dry_run": "query", "order": "body"}
    assert "parameters" not in detail["plain.py"]


def test_string_annotations_and_a_type_checking_only_request_type(make_app, scripts_dir):
    write_scripts(scripts_dir, {"api/future.py": """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from flask import Request  # never imported at run time
        def main(request: Request, n: int = 1) -> dict:
            return {"n": n}
    """, "api/callable.py": """
        class Handler:
            def __call__(self, request):
                return {"ok": True}
        main = Handler()
    """})  # fmt: skip
    client = make_app().test_client()
    assert client.get("/api/future.py?n=3", headers=API).get_json() == {"n": 3}
    assert client.get("/api/future.py?n=x", headers=API).status_code == 400
    assert client.get("/api/callable.py", headers=API).get_json() == {"ok": True}


def test_any_parameter_name_will_do(make_app, scripts_dir, recwarn) -> None:
    write_scripts(scripts_dir, {"api/names.py": """
        def main(request, fields: str = "", json: bool = False, model_id: int = 0):
            return {"fields": fields, "json": json, "model_id": model_id}
    """})  # fmt: skip
    client = make_app().test_client()
    response = client.get("/api/names.py?fields=a,b&json=1&model_id=7", headers=API)
    assert response.get_json() == {"fields": "a,b", "json": True, "model_id": 7}
    assert not [w for w in recwarn if "shadows" in str(w.message)]


def test_pydantic_field_limits_and_description(make_app, scripts_dir) -> None:
    write_scripts(scripts_dir, {"api/limits.py": """
        from typing import Annotated
        from pydantic import Field
        def main(request, times: Annotated[int, Field(ge=1, le=5, description="how many")] = 1):
            return {"times": times}
    """})  # fmt: skip
    client = make_app().test_client()
    assert client.get("/api/limits.py?times=5", headers=API).get_json() == {"times": 5}
    fields = client.get("/api/limits.py?times=9", headers=API).get_json()["fields"]
    assert [(f["name"], f["type"]) for f in fields] == [("times", "less_than_equal")]
    doc = client.get("/_platform/openapi.json", headers=API).get_json()
    (param,) = doc["paths"]["/api/limits.py"]["get"]["parameters"]
    assert param["description"] == "how many"
    assert (param["schema"]["minimum"], param["schema"]["maximum"]) == (1, 5)

"""GET /_platform/openapi.json: valid OpenAPI 3.1 (checked by openapi-spec-validator),
built from the scripts, showing each caller only the zones it may call."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from service.app import create_app
from service.config import Settings, parse_networks
from tests.unit.conftest import ADMIN, API, write_scripts
from tests.unit.test_params import SCRIPTS as PARAM_SCRIPTS

REPO_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
BOTH = {**API, **ADMIN}


def document(client, headers=None) -> dict:
    response = client.get("/_platform/openapi.json", headers=headers or {})
    assert response.status_code == 200
    assert response.content_type == "application/json"
    return response.get_json()


def test_the_example_scripts_document_is_valid_openapi_3_1(tmp_path: Path) -> None:
    app = create_app(
        Settings(
            scripts_dir=REPO_SCRIPTS,
            api_keys=("k",),
            admin_keys=("a",),
            log_file=tmp_path / "log",
            log_stdout=False,
        )
    )
    doc = document(app.test_client(), {"X-API-Key": "k", "X-Admin-Key": "a"})
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert doc["openapi"] == "3.1.0"
    assert {"/hello.py", "/api/greet.py", "/api/orders.py", "/admin/stats.py"} <= set(doc["paths"])


def test_the_test_fixtures_document_is_valid_openapi_3_1(make_app, scripts_dir) -> None:
    write_scripts(scripts_dir, PARAM_SCRIPTS)
    write_scripts(scripts_dir, {"api/broken.py": "def main(request)\n", "limited.py": LIMITED})
    doc = document(make_app().test_client(), BOTH)
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert "/api/_private.py" not in doc["paths"] and "/api/notes.txt" not in doc["paths"]


LIMITED = '''
"""Limited.

Runs two at a time.
"""
CONCURRENCY = 2
METHODS = ["GET", "PUT"]
def main(request, n: int):
    """Args:
        n: how many
    """
    return n
'''


# headers -> the zones whose scripts the caller sees
VISIBILITY = [
    ({}, {"root"}),
    (API, {"root", "api"}),
    (ADMIN, {"root", "admin"}),
    (BOTH, {"root", "api", "admin"}),
    ({"X-API-Key": "wrong"}, {"root"}),
    ({"X-Admin-Key": "unit-api-key-0123456789"}, {"root"}),  # the other zone's key
]


def zones_seen(doc: dict) -> set[str]:
    """The zones of the scripts listed (the platform's job endpoints are in every one)."""
    scripts = (item for url, item in doc["paths"].items() if not url.startswith("/_platform/"))
    return {op["tags"][0] for item in scripts for op in item.values()}


@pytest.mark.parametrize(("headers", "zones"), VISIBILITY)
def test_a_caller_sees_only_the_scripts_it_may_call(client, headers, zones) -> None:
    doc = document(client, headers)
    assert zones_seen(doc) == zones
    assert {tag["name"] for tag in doc["tags"]} == zones | {"jobs"}
    # The schemes are always there, so the docs page can offer to Authorize.
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "adminKey"}


def test_an_open_zone_shows_to_everyone_and_a_closed_one_to_no_one(make_app) -> None:
    client = make_app(api_auth=False, admin_keys=()).test_client()
    assert zones_seen(document(client, BOTH)) == {"root", "api"}
    api_ops = document(client)["paths"]["/api/hello.py"]
    assert "security" not in api_ops["get"] and "401" not in api_ops["get"]["responses"]


def test_the_document_obeys_the_ip_allowlist(make_app) -> None:
    client = make_app(api_trusted_ips=parse_networks("API_TRUSTED_IPS", "10.0.0.1")).test_client()
    response = client.get("/_platform/openapi.json", headers=BOTH)
    assert response.status_code == 403 and response.get_json()["reason"] == "ip"


def test_an_operation_carries_the_scripts_declarations(make_app, scripts_dir) -> None:
    write_scripts(scripts_dir, PARAM_SCRIPTS)
    write_scripts(scripts_dir, {"limited.py": LIMITED})
    doc = document(make_app().test_client(), API)

    typed = doc["paths"]["/api/typed.py"]
    # Default methods are one entry: GET (no body declared), which says POST works too.
    assert set(typed) == {"get"}
    assert typed["get"]["description"].endswith("Also answers POST.")
    params = {p["name"]: p for p in typed["get"]["parameters"]}
    assert params["name"]["required"] is True and params["name"]["in"] == "query"
    assert params["count"]["schema"]["type"] == "integer"
    assert params["count"]["schema"]["default"] == 1
    assert params["ids"]["schema"]["type"] == "array"
    assert params["mode"]["schema"]["enum"] == ["a", "b"]
    assert params["note"]["description"] == "free text"
    assert typed["get"]["summary"] == "Typed query parameters."
    assert typed["get"]["security"] == [{"apiKey": []}]
    assert set(typed["get"]["responses"]) == {
        *("200", "202", "400", "401", "403", "429", "500", "503", "504")
    }

    body = doc["paths"]["/api/body.py"]["post"]
    schema = body["requestBody"]["content"]["application/json"]["schema"]
    assert body["requestBody"]["required"] is True
    assert schema == {"$ref": "#/components/schemas/api_body_py.Order"}
    order = doc["components"]["schemas"]["api_body_py.Order"]
    assert order["required"] == ["customer", "items"]
    assert order["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/api_body_py.Line"
    }
    assert "413" in body["responses"]

    limited = doc["paths"]["/limited.py"]
    assert limited["put"]["description"] == "Runs two at a time."
    assert limited["get"]["parameters"][0]["description"] == "how many"
    assert "429" in limited["get"]["responses"] and "requestBody" not in limited["get"]
    assert "security" not in limited["get"]


def test_a_broken_script_is_not_offered_to_callers(make_app, scripts_dir) -> None:
    write_scripts(scripts_dir, {"broken.py": "def main(request)\n"})
    client = make_app().test_client()
    assert "/broken.py" not in document(client)["paths"]
    detail = client.get("/_platform/routes?detail=1").get_json()["root"]
    assert {"path": "broken.py", "state": "import_error"}.items() <= next(
        r for r in detail if r["path"] == "broken.py"
    ).items()


def test_an_async_script_is_documented_as_a_job(make_app, scripts_dir) -> None:
    write_scripts(scripts_dir, {"slow.py": "ASYNC = True\ndef main(request):\n    return 1\n"})
    client = make_app().test_client()
    responses = document(client)["paths"]["/slow.py"]["get"]["responses"]
    assert "200" not in responses and "Location" in responses["202"]["headers"]
    assert responses["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/Job")
    answer = client.get("/slow.py")
    assert answer.status_code == 202 and answer.headers["Location"].startswith("/_platform/jobs/")
    hello = document(client)["paths"]["/hello.py"]["get"]["responses"]
    assert {"200", "202"} <= set(hello)  # any call may ask Prefer: respond-async


def test_each_answer_shows_its_own_example_body(client) -> None:
    responses = document(client, BOTH)["components"]["responses"]
    examples = {
        name: [e["value"] for e in r["content"]["application/json"]["examples"].values()]
        for name, r in responses.items()
    }
    assert {"error": "timeout"}.items() <= examples["Timeout"][0].items()
    assert [e["error"] for e in examples["ScriptFailed"]] == ["internal error"] * 3
    assert {e.get("reason") for e in examples["Unauthorized"]} == {
        "api_key",
        "admin_key",
        "expired",
    }
    assert "fields" in examples["InvalidParameters"][0]


REFUSED = {  # (path, headers, settings) -> a refusal the server answers
    "401": ("/api/hello.py", {"X-API-Key": "wrong"}, {}),
    "403": ("/admin/stats.py", ADMIN, {"admin_trusted_ips": parse_networks("x", "10.0.0.0/8")}),
    "504": ("/slow.py", {}, {"script_timeout": 0.5}),
    "500": ("/raises.py", {}, {}),
}


@pytest.mark.parametrize("status", sorted(REFUSED))
def test_the_document_declares_what_the_server_answers(make_app, scripts_dir, status) -> None:
    """Provoke each refusal for real and find its status, error and reason in the document
    of that very operation."""
    write_scripts(
        scripts_dir,
        {
            "slow.py": "import time\ndef main(request):\n    time.sleep(5)\n",
            "raises.py": "def main(request):\n    raise ValueError('no')\n",
        },
    )
    path, headers, settings = REFUSED[status]
    client = make_app(**settings).test_client()
    answer = client.get(path, headers=headers)
    assert str(answer.status_code) == status
    doc = document(make_app().test_client(), BOTH)  # as a caller the allowlist lets in
    declared = doc["paths"][path]["get"]["responses"][status]["$ref"].rsplit("/", 1)[1]
    media = doc["components"]["responses"][declared]["content"]["application/json"]
    bodies = [e["value"] for e in media["examples"].values()]
    got = answer.get_json()
    assert any(
        (b["error"], b.get("reason")) == (got["error"], got.get("reason")) for b in bodies
    ), (got, bodies)


def test_every_error_response_is_the_json_error_body(client) -> None:
    doc = document(client, BOTH)
    responses = doc["components"]["responses"]
    for name, response in responses.items():
        schema = response["content"]["application/json"]["schema"]["$ref"]
        assert schema.rsplit("/", 1)[1] in ("Error", "FieldErrors"), name
        assert response["headers"]["X-Trace-Id"] == {"$ref": "#/components/headers/X-Trace-Id"}
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "trace_id"]


def test_docs_page_and_its_assets_come_from_this_server(client) -> None:
    page = client.get("/_platform/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "<title>Scriptgate API</title>" in html
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == [
        "docs/swagger-ui.css",
        "docs/favicon-32x32.png",
        "docs/swagger-ui-bundle.js",
        "docs/scriptgate-docs.js",
    ], "every asset from this server"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    for asset, mimetype in (
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("scriptgate-docs.js", "text/javascript"),
        ("favicon-32x32.png", "image/png"),
    ):
        response = client.get(f"/_platform/docs/{asset}")
        assert response.status_code == 200 and response.mimetype == mimetype, asset
        assert response.headers["Cache-Control"] == "public, max-age=3600"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/_platform/docs/swagger-ui-standalone-preset.js", "/_platform/docs/../health",
                 "/_platform/docs/index.html", "/_platform/docs/"):  # fmt: skip
        assert client.get(path).status_code == 404, path


def test_every_document_describes_the_job_endpoints_and_the_job_record(client) -> None:
    doc = document(client, {})
    listing = doc["paths"]["/_platform/jobs"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "script", "state", "trigger", "since", "until", "caller", "limit", "cursor"
    }  # fmt: skip
    assert {
        "/_platform/jobs/{id}",
        "/_platform/jobs/{id}/result",
        "/_platform/jobs/{id}/logs",
        "/_platform/jobs/{id}/events",
    } <= set(doc["paths"])
    record = doc["components"]["schemas"]["Job"]["properties"]
    assert {"caller", "trigger", "attempt", "attempts", "progress", "query"} <= set(record)
    assert record["progress"]["properties"]["fraction"]["maximum"] == 1
    events = doc["paths"]["/_platform/jobs/{id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert [p["name"] for p in events["parameters"]] == ["Last-Event-ID"]
    assert "after" in [
        p["name"] for p in doc["paths"]["/_platform/jobs/{id}/logs"]["get"]["parameters"]
    ]

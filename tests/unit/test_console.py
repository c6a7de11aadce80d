"""The console's page and its listing, without a browser: what it serves, under which
policy, within which budget, and which scripts the listing gives each key
(tests/integration/test_console.py takes the journeys in a real Chromium)."""

from __future__ import annotations

import gzip
import re

from service.platform.console import ASSETS, BUDGET_GZIP_BYTES, CONTENT_SECURITY_POLICY
from service.platform.docs import STATIC
from tests.unit.conftest import ADMIN, API, write_scripts


def test_the_platform_root_leads_to_the_console_page(client) -> None:
    response = client.get("/_platform/")
    assert response.status_code == 302 and response.headers["Location"] == "/_platform/console"
    page = client.get("/_platform/console")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert re.findall(r'(?:src|href)="([^"#]+)"', page.get_data(as_text=True)) == [
        "console/console.css",
        "console/console.js",
    ], "every asset from this server"


def test_the_page_has_no_inline_script_or_style_and_never_writes_html() -> None:
    html = (STATIC / "console.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), "inline style or handler"
    code = (STATIC / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, f"console.js uses {sink}: text from scripts must stay text"


def test_the_assets_are_gzipped_within_the_budget(client) -> None:
    total = 0
    for name, mimetype in ASSETS.items():
        response = client.get(f"/_platform/console/{name}", headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200 and response.mimetype == mimetype
        assert response.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(response.get_data()) == (STATIC / name).read_bytes()
        total += len(response.get_data())
        plain = client.get(f"/_platform/console/{name}")
        assert "Content-Encoding" not in plain.headers
        assert plain.get_data() == (STATIC / name).read_bytes()
        again = client.get(
            f"/_platform/console/{name}",
            headers={"Accept-Encoding": "gzip", "If-None-Match": response.headers["ETag"]},
        )
        assert again.status_code == 304
    assert total <= BUDGET_GZIP_BYTES, f"console.js + console.css: {total} bytes gzipped"
    assert client.get("/_platform/console/console.html").status_code == 404


def listing(client, headers: dict[str, str], **query: str) -> dict:
    response = client.get("/_platform/console/scripts", headers=headers, query_string=query)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    return response.get_json()


def urls(body: dict) -> set[str]:
    return {script["url"] for script in body["scripts"]}


def test_the_listing_is_what_each_key_may_call(client) -> None:
    anonymous = listing(client, {})
    assert urls(anonymous) == {"/hello.py"}
    assert anonymous["caller"]["id"] == "anonymous" and not anonymous["may"]["keys"]

    api = listing(client, API)
    assert urls(api) == {"/hello.py", "/api/hello.py", "/api/reports/daily.py"}
    assert api["may"] == {"keys": False, "routes": True, "all_runs": False, "schedules": False}
    daily = next(s for s in api["scripts"] if s["url"] == "/api/reports/daily.py")
    assert (daily["zone"], daily["folder"], daily["name"]) == ("api", "reports", "daily.py")
    # Not described yet (the listing never waits for an import): asked for by name.
    assert daily.get("pending") or daily["summary"] == "Daily report."
    [daily] = listing(client, API, url="/api/reports/daily.py")["scripts"]
    assert daily["summary"] == "Daily report." and "pending" not in daily
    again = next(s for s in listing(client, API)["scripts"] if s["url"] == daily["url"])
    listed = ("zone", "folder", "name", "url", "summary", "async")
    assert again == {k: daily[k] for k in listed}, "described once: listed with its summary"
    assert {"description", "methods", "params"} <= set(daily), "the form, when asked for"
    for url in ("/admin/stats.py", "/api/nope.py", "/api/_private.py", "/../etc/passwd"):
        answer = client.get("/_platform/console/scripts", query_string={"url": url}, headers=API)
        assert answer.status_code == 404, url  # another zone's, absent, private: alike

    admin = listing(client, ADMIN)
    assert urls(admin) == {"/hello.py", "/admin/stats.py"}
    assert admin["may"] == {"keys": True, "routes": True, "all_runs": True, "schedules": True}


def test_a_wrong_key_is_refused_and_nothing_is_listed(client) -> None:
    for header in ("X-API-Key", "X-Admin-Key"):
        response = client.get("/_platform/console/scripts", headers={header: "nope"})
        assert response.status_code == 401
        assert response.get_json()["header"] == header
        assert "scripts" not in response.get_json()


def test_the_listing_leaves_broken_scripts_out_and_carries_each_form(make_app, scripts_dir) -> None:
    write_scripts(
        scripts_dir,
        {
            "api/broken.py": "def main(request)\n",
            "api/typed.py": '''
                """Typed."""
                from typing import Literal
                ASYNC = True
                def main(request, day: str, mode: Literal["a", "b"] = "a", n: list[int] = []):
                    return day
            ''',
        },
    )
    client = make_app().test_client()
    answer = client.get("/_platform/console/scripts?url=/api/broken.py", headers=API)
    assert answer.status_code == 404  # it does not load: not offered, like an absent one
    body = listing(client, API)
    assert "/api/broken.py" not in urls(body), "once known to be broken, left out"
    [typed] = listing(client, API, url="/api/typed.py")["scripts"]
    assert typed["async"] is True and typed["methods"] == ["GET", "POST"]
    query = {p["name"]: p for p in typed["params"]["query"]}
    assert query["day"]["required"] and query["n"]["many"]
    assert typed["params"]["schema"]["properties"]["mode"]["enum"] == ["a", "b"]

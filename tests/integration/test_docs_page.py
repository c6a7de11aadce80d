"""GET /_platform/docs in a real headless Chromium (Debian's, driven by Playwright) against
a real `scriptgate serve`: load, authorize with a key, try a script, see its answer."""

from __future__ import annotations

import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import REPO, Gunicorn, gunicorn, log_records, request_record, wait_until

CHROMIUM = "/usr/bin/chromium"
# The network is closed: nothing may phone home, and every profile starts empty.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "docs-page-api-key-41c7"
ADMIN_KEY = "docs-page-admin-key-93e2"
TIMEOUT_MS = 20_000

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make debs)"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Gunicorn]:
    scripts = tmp_path / "scripts"
    shutil.copytree(REPO / "scripts", scripts)
    env = {"API_KEY": API_KEY, "ADMIN_API_KEY": ADMIN_KEY}
    with gunicorn(scripts, tmp_path, workers=2, env=env) as running:
        yield running


@pytest.fixture
def page(tmp_path: Path):
    """A page in a fresh Chromium profile; the browser always closes."""
    with sync_api.sync_playwright() as playwright:
        # A persistent context is how Playwright takes a --user-data-dir: a new one here.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            context.close()


def paths_listed(page) -> set[str]:
    return {e.get_attribute("data-path") for e in page.query_selector_all("[data-path]")}


def authorize(page, header: str, key: str) -> None:
    page.click("button.authorize")
    form = page.locator(".auth-container").filter(has_text=header)
    form.locator("input").fill(key)
    form.locator("button.authorize").click()
    page.click(".modal-ux button.btn-done")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_docs_page_authorize_and_try_a_script(server: Gunicorn, page, tmp_path: Path) -> None:
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))

    page.goto(server.url + "/_platform/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert page.title() == "Scriptgate API"
    assert "Scriptgate" in page.inner_text(".info .title")
    page.wait_for_selector('[data-path="/hello.py"]')
    # Without a key, the page shows the root zone only.
    assert not any(p.startswith(("/api/", "/admin/")) for p in paths_listed(page))

    authorize(page, "X-API-Key", API_KEY)
    page.wait_for_selector('[data-path="/api/greet.py"]')  # the document, fetched again
    listed = paths_listed(page)
    assert {"/hello.py", "/api/greet.py", "/api/orders.py"} <= listed
    assert not any(p.startswith("/admin/") for p in listed), "the API key does not open /admin"

    operation = page.locator("#operations-api-GET_api_greet_py")
    operation.locator(".opblock-summary").click()
    operation.locator('tr[data-param-name="name"] input').fill("Rico")
    operation.locator('tr[data-param-name="times"] input').fill("2")
    operation.locator("button.execute").click()
    live = operation.locator(".live-responses-table")
    status = live.locator("td.response-col_status:not(.col_header)")
    status.wait_for()
    answer = live.inner_text()
    assert status.inner_text().strip() == "200"
    assert '"message": "Hello, Rico! Hello, Rico!"' in answer
    trace_id = re.search(r"x-trace-id: ([0-9a-f]{32})", answer)
    assert trace_id, answer

    live.scroll_into_view_if_needed()
    shot = page.screenshot(path=str(tmp_path / "docs-page.png"))
    width, height = png_size(shot)
    assert (width, height) == (1280, 900) and len(shot) > 20_000

    # The call the page made is a real one: logged with the trace id the page showed,
    # with the script's own log line under the same id.
    record = request_record(trace_id[1], server)
    assert (record["zone"], record["script"], record["status"]) == ("api", "greet.py", 200)
    assert record["query"] == {"name": "Rico", "times": "2", "shout": "false"}
    logger = "scriptgate_script.api.greet"
    own = wait_until(
        lambda: [r for r in log_records(server) if r.get("logger") == logger],
        what="greet.py's own log line",
    )
    assert own[-1]["trace_id"] == trace_id[1] and own[-1]["message"] == "greeting Rico 2 times"

    # Logging out hides the zone again.
    page.click("button.authorize")
    form = page.locator(".auth-container").filter(has_text="X-API-Key")
    form.locator("button", has_text="Logout").click()
    page.click(".modal-ux button.btn-done")
    wait_until(lambda: "/api/greet.py" not in paths_listed(page), what="the api zone to go")

    assert all(url.startswith(server.url + "/") for url in requested), requested
    assert not problems, problems  # no script error, no Content-Security-Policy refusal

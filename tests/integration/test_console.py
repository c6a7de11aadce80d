"""GET /_platform/console in a real headless Chromium (Debian's, driven by Playwright)
against a real `scriptgate serve` with several workers: the journeys of issue 23, as a
person who is not a programmer would take them. Screenshots go to each test's tmp_path."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_docs_page import CHROMIUM, CHROMIUM_ARGS
from tests.servers import REPO, Gunicorn, gunicorn, request_record, wait_until

API_KEY = "console-api-key-7f1d"
ADMIN_KEY = "console-admin-key-2c9a"
REPORTS_KEY = "console-reports-key-5e0b"  # a named key for api/reports/* only
OTHER_KEY = "console-other-key-88aa"  # another api key: must not see the first one's runs
TIMEOUT_MS = 20_000
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make debs)"
)

SCRIPTS = {
    "api/sales.py": '''
        """Sales by region: a table you can sort and download.

        Pick a day and a region; `top` keeps the biggest rows.
        """
        from datetime import date
        from typing import Annotated, Literal

        from pydantic import Field

        METHODS = ["GET"]
        ROWS = {
            "north": [("widgets", 30, 120.5), ("gadgets", 12, 300.0), ("sprockets", 55, 82.5)],
            "south": [("widgets", 7, 28.0)],
        }


        def main(
            request,
            day: Annotated[date, "the day to report on"],
            region: Annotated[Literal["north", "south"], "which region"] = "north",
            top: Annotated[int, Field(ge=1, le=10, description="how many rows at most")] = 5,
            detailed: Annotated[bool, "add the unit price"] = False,
            tags: Annotated[list[str] | None, "labels to print on the report"] = None,
        ):
            rows = []
            for product, units, revenue in ROWS[region][:top]:
                row = {"day": day.isoformat(), "product": product, "units": units}
                row["revenue"] = revenue
                if detailed:
                    row["unit_price"] = round(revenue / units, 2)
                row["tags"] = " ".join(tags or [])
                rows.append(row)
            return rows
    ''',
    "api/slow.py": '''
        """A long report: always a job; it logs, then waits for its go file."""
        import logging
        import time
        from pathlib import Path

        ASYNC = True
        GO = Path(GO_FILE)
        log = logging.getLogger(__name__)


        def main(request):
            log.info("step 1 of 2: counting rows")
            for _ in range(600):  # at most a minute
                if GO.exists():
                    break
                time.sleep(0.05)
            log.info("step 2 of 2: done")
            return {"rows": 3, "regions": {"north": 2, "south": 1}}
    ''',
    "api/hostile.py": f'''
        """{HOSTILE} a summary that is markup.

        <script>document.title = "pwned"</script> and a description that is too.
        """
        from typing import Annotated, Literal

        METHODS = ["GET"]
        MARKUP = {HOSTILE!r}


        def main(
            request,
            kind: Annotated[Literal["table", "tree", "text"], {HOSTILE!r}] = "table",
        ):
            if kind == "text":
                return MARKUP + "\\n"
            if kind == "tree":
                return {{"html": MARKUP}}
            return [{{"name": MARKUP, "n": 1}}]
    ''',
    "api/nightly.py": '''
        """Nightly totals, at two in the morning."""
        SCHEDULE = "0 2 * * *"
        SCHEDULE_TZ = "Europe/Paris"


        def main(request):
            return {"totals": 3}
    ''',
    "api/steps.py": '''
        """Counts in two steps and says how far it got; waits for its go file in between."""
        import logging
        import time
        from pathlib import Path

        from scriptgate import progress

        ASYNC = True
        GO = Path(GO_FILE)
        log = logging.getLogger(__name__)


        def main(request):
            log.info("step 1 of 2: counting rows")
            progress(0.5, "1 of 2 steps")
            for _ in range(600):  # at most a minute
                if GO.exists():
                    break
                time.sleep(0.05)
            log.info("step 2 of 2: done")
            progress(1.0, "2 of 2 steps")
            return {"rows": 3}
    ''',
    "api/broken.py": """
        def main(request):
            return (
    """,
}


def key_entry(key_id: str, secret: str, scopes: str) -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    owner = f"{key_id}@example.com"
    return f'[keys.{key_id}]\nowner = "{owner}"\nhash = "sha256:{digest}"\nscopes = {scopes}\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gunicorn, Path]]:
    """One server for the module (starting one is the slow part): the repository's
    scripts and this test's, two keys from the environment and two named ones."""
    tmp = tmp_path_factory.mktemp("console")
    scripts = tmp / "scripts"
    shutil.copytree(REPO / "scripts", scripts)
    go = tmp / "go"
    go.mkdir()
    for name, source in SCRIPTS.items():
        text = textwrap.dedent(source).lstrip()
        (scripts / name).write_text(text.replace("GO_FILE", repr(str(go / "slow.go"))))
    keys = tmp / "keys.toml"
    keys.write_text(
        key_entry("reports", REPORTS_KEY, '["api:reports/*"]')
        + key_entry("other", OTHER_KEY, '["api:*"]')
    )
    env = {"API_KEY": API_KEY, "ADMIN_API_KEY": ADMIN_KEY, "KEYS_FILE": str(keys)}
    with gunicorn(scripts, tmp, workers=2, env={**env, "JOB_WORKERS": "2"}) as server:
        yield server, go


@pytest.fixture
def server(served: tuple[Gunicorn, Path]) -> Gunicorn:
    return served[0]


@pytest.fixture
def go_file(served: tuple[Gunicorn, Path]) -> Iterator[Path]:
    path = served[1] / "slow.go"
    path.unlink(missing_ok=True)
    yield path
    path.touch()  # a job left waiting finishes rather than hold a job worker


class Browser:
    """Pages in one fresh Chromium profile, with every request and page error noted."""

    def __init__(self, context) -> None:
        self.context = context
        self.requested: list[str] = []
        self.problems: list[str] = []

    def _console(self, message) -> None:
        # A refused call (401 at sign-in, a 400 to show) is the page working; a CSP
        # refusal or a script error is not.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(message.text)

    def page(self, width: int = 1280, height: int = 900):
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        page.on("request", lambda r: self.requested.append(r.url))
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        return page


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            yield Browser(context)
        finally:
            context.close()


def sign_in(page, server: Gunicorn, key: str, path: str = "/_platform/") -> None:
    page.goto(server.url + path)
    page.fill("#key", key)
    page.press("#key", "Enter")
    page.wait_for_selector("#nav:not([hidden])")


def press(page, button: str) -> None:
    page.get_by_role("button", name=button, exact=True).click()


def listed(page) -> list[str]:
    return [
        a.get_attribute("href") for a in page.query_selector_all("#script-list li:not([hidden]) a")
    ]


def field(page, name: str):
    return page.locator(f'.field[data-field="{name}"]')


def test_sign_in_find_a_report_fix_a_bad_value_and_download_its_table(
    server: Gunicorn, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page()
    page.goto(server.url + "/_platform/")
    assert page.url == server.url + "/_platform/console"  # /_platform/ leads here
    page.fill("#key", "not-a-key")
    press(page, "Sign in")
    expect(page.locator("#signin-error")).to_contain_text("not recognised")
    assert page.evaluate("sessionStorage.length") == 0

    page.fill("#key", API_KEY)
    press(page, "Sign in")
    page.wait_for_selector('#script-list a[href="#/scripts/api/sales.py"]')
    hrefs = listed(page)
    assert "#/scripts/hello.py" in hrefs and "#/scripts/api/greet.py" in hrefs
    assert not any(h.startswith("#/scripts/admin/") for h in hrefs), "an API key opens no /admin"
    # A broken script is not offered, once the server has found it broken (the listing
    # never waits for imports: it may list a script by name before a runner read it).
    expect(page.locator('#script-list a[href="#/scripts/api/broken.py"]')).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('scriptgate.key')") == API_KEY

    page.fill("#search", "sales region")
    wait_until(lambda: listed(page) == ["#/scripts/api/sales.py"], what="the search to narrow")
    page.click('a[href="#/scripts/api/sales.py"]')
    pane = page.locator("#script-pane")
    assert pane.locator("h2").inner_text() == "/api/sales.py"
    assert "table you can sort and download" in pane.inner_text()
    # A form from the declaration: the right control for each type, with its text.
    assert field(page, "day").locator("input").get_attribute("type") == "date"
    assert field(page, "region").locator("select option").all_inner_texts() == [
        "",
        "north",
        "south",
    ]
    top = field(page, "top").locator("input")
    assert (top.get_attribute("type"), top.get_attribute("min"), top.get_attribute("max")) == (
        "number",
        "1",
        "10",
    )
    assert field(page, "detailed").locator("input").get_attribute("type") == "checkbox"
    assert "how many rows at most" in field(page, "top").inner_text()
    field(page, "tags").locator("button", has_text="Add another").click()
    tags = field(page, "tags").locator("input")
    assert tags.count() == 2

    # A bad value: the server's 400, shown next to its field; nothing is queued.
    field(page, "day").locator("input").fill("2026-12-01")
    top.fill("99")
    tags.nth(0).fill("q4")
    tags.nth(1).fill("draft")
    press(page, "Run as a job")
    error = field(page, "top").locator(".error")
    expect(error).to_contain_text("less than or equal to 10")
    assert page.evaluate("document.activeElement.id") == "p-top"
    assert "HTTP 400" in page.locator(".output .status").inner_text()
    assert runs_of(server, API_KEY, "/api/sales.py") == []
    page.screenshot(path=str(tmp_path / "console-form.png"))

    # A good one, as a job: its run page, its result as a table, sorted, downloaded.
    top.fill("2")
    field(page, "detailed").locator("input").check()
    press(page, "Run as a job")
    page.wait_for_url(re.compile(r"#/runs/[A-Za-z0-9_-]{32}$"))
    job_id = page.url.rpartition("/")[2]
    expect(page.locator('.record dd[data-name="State"]')).to_have_text("succeeded")
    result = page.locator("#run-result")
    headers = result.locator("th")
    expect(headers).to_have_text(["day", "product", "units", "revenue", "unit_price", "tags"])
    units = result.locator("td:nth-child(3)")
    assert units.all_inner_texts() == ["30", "12"]
    result.locator("th:nth-child(3) button").click()
    assert units.all_inner_texts() == ["12", "30"]  # sorted as numbers, ascending
    page.screenshot(path=str(tmp_path / "console-report.png"), full_page=True)

    with page.expect_download() as download:
        result.get_by_role("link", name="Download CSV").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "sales.csv"
    rows = list(csv.DictReader(saved.open(newline="")))
    assert [(r["product"], r["units"], r["unit_price"], r["tags"]) for r in rows] == [
        ("gadgets", "12", "25", "q4 draft"),  # as sorted on the page
        ("widgets", "30", "4.02", "q4 draft"),
    ]

    # The call was a real one, on the record under the trace id the page showed.
    trace_id = page.locator('.record dd[data-name="Trace id"]').inner_text()
    record = request_record(trace_id, server)
    assert (record["script"], record["status"]) == ("sales.py", 202)
    assert record["query"]["day"] == "2026-12-01" and record["query"]["top"] == "2"

    # And in the history, from which it opens again.
    page.click("#nav >> text=Runs")
    page.fill("#f-script", "/api/sales.py")
    press(page, "Show runs")
    page.click(f'#runs-table a[href="#/runs/{job_id}"]')
    expect(page.locator('.record dd[data-name="Trace id"]')).to_have_text(trace_id)

    assert API_KEY not in (server.log_file.read_text() + " ".join(browser.requested))
    assert all(url.startswith(server.url + "/") for url in browser.requested)
    assert not browser.problems, browser.problems


def runs_of(server: Gunicorn, key: str, script: str) -> list[dict]:
    answer = server.get("/_platform/jobs", headers={"X-API-Key": key}, params={"script": script})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobs"]


def test_a_job_shows_its_progress_and_log_lines_as_they_happen(
    server: Gunicorn, browser: Browser, go_file: Path, tmp_path: Path
) -> None:
    page = browser.page()
    sign_in(page, server, API_KEY, "/_platform/console#/scripts/api/steps.py")
    press(page, "Run as a job")
    page.wait_for_url(re.compile(r"#/runs/[A-Za-z0-9_-]{32}$"))
    state = page.locator('.record dd[data-name="State"]')
    # While the script waits for its go file: its progress and first line, live.
    expect(page.locator("#run-message")).to_have_text("1 of 2 steps")
    assert page.locator("#run-progress").evaluate("p => p.value") == 0.5
    expect(page.locator("#run-log li")).to_have_count(1)
    assert "step 1 of 2: counting rows" in page.locator("#run-log").inner_text()
    assert state.inner_text() == "running"
    page.screenshot(path=str(tmp_path / "console-live.png"))

    go_file.touch()
    expect(state).to_have_text("succeeded")
    expect(page.locator("#run-message")).to_have_text("2 of 2 steps")
    # Each line once: from the events while it ran, and from /logs after.
    expect(page.locator("#run-log li")).to_have_count(2)
    assert "step 2 of 2: done" in page.locator("#run-log").inner_text()
    expect(page.locator("#run-result .json")).to_contain_text("rows: 3")
    assert not browser.problems, browser.problems


def test_a_scoped_key_sees_only_the_scripts_it_may_call(server: Gunicorn, browser: Browser) -> None:
    page = browser.page()
    sign_in(page, server, REPORTS_KEY)
    page.wait_for_selector("#script-list a")
    api = [h for h in listed(page) if h.startswith("#/scripts/api/")]
    assert api == ["#/scripts/api/reports/daily.py"]
    assert page.locator("#script-list h2").all_inner_texts() == ["root", "api / reports"]


def test_a_job_has_a_run_page_to_follow_cancel_and_find_in_history(
    server: Gunicorn, browser: Browser, go_file: Path, tmp_path: Path
) -> None:
    page = browser.page()
    sign_in(page, server, API_KEY, "/_platform/console#/scripts/api/slow.py")
    pane = page.locator("#script-pane")
    pane.locator("h2", has_text="/api/slow.py").wait_for()
    assert pane.locator("button").all_inner_texts() == ["Run as a job"]  # ASYNC: a job only
    press(page, "Run as a job")
    page.wait_for_url(re.compile(r"#/runs/[A-Za-z0-9_-]{32}$"))
    run_url = page.url
    job_id = run_url.rpartition("/")[2]
    state = page.locator('.record dd[data-name="State"]')
    wait_until(lambda: state.inner_text() == "running", what="the job to run")
    go_file.touch()
    wait_until(lambda: state.inner_text() == "succeeded", what="the job to succeed")
    result = page.locator("#run-result")
    result.locator(".json").wait_for()
    assert '"north"' not in result.inner_text() and "north: 2" in result.inner_text()
    trace = page.locator('.record dd[data-name="Trace id"]').inner_text()
    assert re.fullmatch(r"[0-9a-f]{32}", trace)
    assert not page.locator("#run-cancel").is_visible()
    page.screenshot(path=str(tmp_path / "console-run.png"))

    # Another run, cancelled while it waits.
    go_file.unlink()
    page.goto(server.url + "/_platform/console#/scripts/api/slow.py")
    press(page, "Run as a job")
    page.wait_for_url(re.compile(r"#/runs/(?!" + job_id + ")[A-Za-z0-9_-]{32}$"))
    cancelled_id = page.url.rpartition("/")[2]
    wait_until(lambda: state.inner_text() == "running", what="the second job to run")
    page.click("#run-cancel")
    wait_until(lambda: state.inner_text() == "cancelled", what="the job to be cancelled")

    # History: both runs, filtered by script and state; each opens its page.
    page.click("#nav >> text=Runs")
    page.fill("#f-script", "/api/slow.py")
    page.select_option("#f-state", "succeeded")
    press(page, "Show runs")
    page.wait_for_selector(f'#runs-table a[href="#/runs/{job_id}"]')
    expect(page.locator(f'#runs-table a[href="#/runs/{cancelled_id}"]')).to_have_count(0)
    expect(page.locator("#runs-table .state")).to_have_text(["succeeded"])
    page.select_option("#f-state", "cancelled")
    press(page, "Show runs")
    page.wait_for_selector(f'#runs-table a[href="#/runs/{cancelled_id}"]')
    page.click(f'#runs-table a[href="#/runs/{cancelled_id}"]')
    wait_until(lambda: state.inner_text() == "cancelled", what="the run page from history")

    # The run's URL is stable: a colleague with access opens it after signing in; a key
    # that did not start it, and may not see every run, is told there is no such run.
    admin = browser.context.new_page()  # same profile, but a new tab: a new session
    admin.goto(run_url)
    admin.fill("#key", ADMIN_KEY)
    admin.press("#key", "Enter")
    admin_state = admin.locator('.record dd[data-name="State"]')
    wait_until(
        lambda: admin_state.is_visible() and admin_state.inner_text() == "succeeded",
        what="the admin's view",
    )
    # The admin's history is everyone's; filtered by trigger and by time.
    admin.click("#nav >> text=Runs")
    admin.fill("#f-script", "/api/slow.py")
    admin.select_option("#f-trigger", "call")
    press(admin, "Show runs")
    expect(admin.locator(f'#runs-table a[href="#/runs/{job_id}"]')).to_have_count(1)
    assert "api-key-1" in admin.locator("#runs-table").inner_text()
    admin.fill("#f-since", "2100-01-01T00:00")
    press(admin, "Show runs")
    expect(admin.locator("#runs-table")).to_have_text("No runs match.")

    other = browser.context.new_page()
    other.goto(run_url)
    other.fill("#key", OTHER_KEY)
    other.press("#key", "Enter")
    other.locator("#view-run .error").wait_for()
    assert "No such run" in other.locator("#view-run").inner_text()
    other.click("#nav >> text=Runs")
    expect(other.locator("#runs-table")).to_have_text("No runs match.")  # none of its own
    assert not browser.problems, browser.problems


def test_script_text_and_output_are_never_markup(
    server: Gunicorn, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page()
    sign_in(page, server, API_KEY, "/_platform/console#/scripts/api/hostile.py")
    pane = page.locator("#script-pane")
    pane.locator("h2").wait_for()
    assert HOSTILE in pane.locator(".summary").inner_text()
    assert '<script>document.title = "pwned"</script>' in pane.inner_text()
    assert HOSTILE in field(page, "kind").locator(".hint").inner_text()
    for kind, shown_in in (
        ("table", ".output td"),
        ("tree", ".output .json"),
        ("text", ".output pre"),
    ):
        field(page, "kind").locator("select").select_option(kind)
        press(page, "Run now")
        wait_until(
            lambda s=shown_in: HOSTILE in " ".join(page.locator(s).all_inner_texts()), what=kind
        )
    expect(page.locator("#script-list")).to_contain_text(HOSTILE)  # its summary, listed
    assert page.locator("img").count() == 0
    assert page.locator("main script").count() == 0
    assert page.title() == "Scriptgate console"
    page.screenshot(path=str(tmp_path / "console-hostile.png"))
    assert not browser.problems, browser.problems


def test_a_file_is_a_download_text_is_text_and_a_body_is_json(
    server: Gunicorn, browser: Browser
) -> None:
    page = browser.page()
    sign_in(page, server, API_KEY, "/_platform/console#/scripts/api/export.py")
    field(page, "day").locator("input").fill("2026-11-26")
    press(page, "Run now")
    link = page.get_by_role("link", name="Download calls-2026-11-26.csv")
    with page.expect_download() as download:
        link.click()
    saved = Path(download.value.path())
    assert saved.read_text().splitlines() == ["day,script,calls", "2026-11-26,greet.py,42"]
    assert download.value.suggested_filename == "calls-2026-11-26.csv"

    page.goto(server.url + "/_platform/console#/scripts/report.py")
    press(page, "Run now")
    expect(page.locator(".output pre.text")).to_have_text("report ok\n")

    # A JSON body: checked as JSON here, then field by field by the server.
    page.goto(server.url + "/_platform/console#/scripts/api/orders.py")
    body = field(page, "").locator("textarea")
    expect(field(page, "")).to_contain_text("Fields: customer, items, note")
    body.fill('{"customer": "Rico", "items": [{"sku": "A-1", "quantity": 2}')
    press(page, "Run now")
    expect(field(page, "").locator(".error")).to_contain_text("not valid JSON")
    body.fill('{"customer": "Rico", "items": [{"quantity": "two"}]}')
    press(page, "Run now")
    expect(field(page, "").locator(".error")).to_contain_text("items[0].sku: Field required")
    assert "items[0].quantity: Input should be a valid integer" in field(page, "").inner_text()
    body.fill('{"customer": "Rico", "items": [{"sku": "A-1", "quantity": 2}, {"sku": "B-7"}]}')
    press(page, "Run now")
    expect(page.locator(".output .status")).to_contain_text("HTTP 201")
    expect(page.locator(".output .json")).to_contain_text("articles: 3")
    assert field(page, "").locator(".error").inner_text() == ""
    assert not browser.problems, browser.problems


def test_an_admin_sees_broken_scripts_and_the_keys_with_last_use(
    server: Gunicorn, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page()
    sign_in(page, server, API_KEY)
    assert not page.locator("#nav-admin").is_visible()
    page.click("#sign-out")
    page.wait_for_selector("#view-signin:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0

    sign_in(page, server, ADMIN_KEY)
    assert "#/scripts/admin/stats.py" in listed(page)
    page.click("#nav-admin")
    broken = page.locator("#admin-broken tr", has_text="/api/broken.py")
    broken.wait_for()
    assert "import_error" in broken.inner_text()
    assert re.search(r"line \d+", broken.inner_text()), broken.inner_text()
    keys = page.locator("#admin-keys tbody tr")
    keys.first.wait_for()
    by_id = {row.locator("td").first.inner_text(): row.inner_text() for row in keys.all()}
    assert set(by_id) >= {"api-key-1", "admin-key-1", "reports", "other"}
    assert by_id["api-key-1"].split("\t")[-1].strip() not in ("", "never")  # used just now
    for secret in (API_KEY, ADMIN_KEY, REPORTS_KEY, OTHER_KEY):
        assert secret not in page.content()
    page.screenshot(path=str(tmp_path / "console-admin.png"))
    assert not browser.problems, browser.problems


def test_schedules_show_their_runs_and_an_admin_pauses_and_resumes_one(
    server: Gunicorn, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page()
    sign_in(page, server, ADMIN_KEY, "/_platform/console#/schedules")
    row = page.locator('#schedules-table tr[data-script="/api/nightly.py"]')
    expect(row).to_contain_text("0 2 * * * (Europe/Paris)")
    cells = row.locator("td")
    assert re.search(r"\d", cells.nth(2).inner_text()), "its next run, as a time"
    assert cells.nth(3).inner_text() == "never"
    expect(row.locator(".schedule-state")).to_have_text("active")

    row.get_by_role("button", name="Pause /api/nightly.py").click()
    expect(row.locator(".schedule-state")).to_have_text("paused")
    expect(cells.nth(2)).to_have_text("paused")
    answer = server.get("/_platform/schedules", headers={"X-Admin-Key": ADMIN_KEY}).json()
    [nightly] = [s for s in answer["schedules"] if s["script"] == "/api/nightly.py"]
    assert nightly["paused"] is True, "paused on the server, not only on the page"
    page.screenshot(path=str(tmp_path / "console-schedules.png"))

    row.get_by_role("button", name="Resume /api/nightly.py").click()
    expect(row.locator(".schedule-state")).to_have_text("active")

    # A key without the platform:schedules scope sees the schedules, not the buttons.
    reader = browser.context.new_page()
    sign_in(reader, server, API_KEY, "/_platform/console#/schedules")
    their_row = reader.locator('#schedules-table tr[data-script="/api/nightly.py"]')
    expect(their_row.locator(".schedule-state")).to_have_text("active")
    assert their_row.locator("button").count() == 0
    assert not browser.problems, browser.problems


CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def test_the_page_is_strict_small_keyboard_usable_and_fits_a_phone(
    server: Gunicorn, browser: Browser, tmp_path: Path
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    page = browser.page(390, 844)  # a phone
    assets: list = []
    page.on("requestfinished", lambda r: r.url.endswith((".js", ".css")) and assets.append(r))
    response = page.goto(server.url + "/_platform/console")
    assert response.headers["content-security-policy"] == CSP
    # Keyboard only: the key field has the focus; Enter signs in; Tab reaches a script.
    expect(page.locator("#key")).to_be_focused()
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#nav:not([hidden])")
    page.focus("#search")
    page.keyboard.type("greet")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('href')") == "#/scripts/api/greet.py":
            break
    page.keyboard.press("Enter")
    page.wait_for_selector("#p-name")
    assert "who to greet" in field(page, "name").inner_text()

    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is wider than the phone: {width}"
    page.screenshot(path=str(tmp_path / "console-phone.png"), full_page=True)

    results = Axe().run(page)
    serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not serious, [(v["id"], v["help"], len(v["nodes"])) for v in serious]

    from service.platform.console import BUDGET_GZIP_BYTES

    # What crossed the network: the encoded (gzipped) bodies.
    sizes = {r.url.rpartition("/")[2]: r.sizes()["responseBodySize"] for r in assets}
    assert set(sizes) == {"console.js", "console.css"}
    assert sum(sizes.values()) <= BUDGET_GZIP_BYTES, sizes  # as it crossed the network
    assert all(url.startswith(server.url + "/") for url in browser.requested)
    assert not browser.problems, browser.problems

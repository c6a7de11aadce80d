"""What a new user meets first: 401s that name the header, broken scripts that show,
a `check` that names a missing package, a `--help` that explains."""

from __future__ import annotations

import pytest

from service import cli
from tests.unit.conftest import write_scripts
from tests.waiting import until


@pytest.mark.parametrize(
    ("path", "headers", "reason", "header"),
    [
        ("/api/hello.py", {}, "api_key", "X-API-Key"),
        ("/api/hello.py", {"X-API-Key": "wrong"}, "api_key", "X-API-Key"),
        ("/api/unknown.py", {}, "api_key", "X-API-Key"),
        ("/admin/stats.py", {}, "admin_key", "X-Admin-Key"),
    ],
)
def test_a_401_says_which_header_the_key_goes_in(client, path, headers, reason, header) -> None:
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == f'ApiKey header="{header}"'
    assert response.get_json() == {
        "error": "unauthorized",
        "reason": reason,
        "header": header,
        "trace_id": response.headers["X-Trace-Id"],
    }


BROKEN = {
    "syntax.py": "def main(request)\n    return 1\n",
    "api/nohandler.py": "X = 1\n",
    "admin/missing.py": "import scriptgate_no_such_package\ndef main(request):\n    return 1\n",
}


def test_health_counts_broken_scripts(make_app, scripts_dir) -> None:
    client = make_app().test_client()

    def health() -> dict:
        return client.get("/_platform/health").get_json()

    before = health()
    assert before["scripts_broken"] == 0
    write_scripts(scripts_dir, BROKEN)
    after = until(lambda: (h := health())["scripts_broken"] == 3 and h, what="3 broken")
    assert after["status"] == "ok"  # the server is fine; some scripts are not
    assert after["scripts"] == before["scripts"] + 3
    (scripts_dir / "syntax.py").write_text("def main(request):\n    return 1\n")
    until(lambda: health()["scripts_broken"] == 2, what="the fixed script counted as fixed")


def test_a_broken_script_is_not_imported_again_on_every_listing(make_app, scripts_dir) -> None:
    counter = scripts_dir / "_imports.txt"
    write_scripts(scripts_dir, {"counting.py": COUNTING.format(counter=str(counter))})
    client = make_app().test_client()

    def imports() -> int:
        return len(counter.read_text()) if counter.exists() else 0

    until(lambda: client.get("/_platform/health").get_json()["scripts_broken"] == 1)
    for _ in range(3):
        assert client.get("/_platform/health").get_json()["scripts_broken"] == 1
        client.get("/_platform/routes?detail=1")
    assert imports() == 1
    # A request still tries again: the contract's "next request sees the fix".
    assert client.get("/counting.py").status_code == 500
    assert imports() == 2


COUNTING = """
with open({counter!r}, "a") as f:
    f.write("x")
raise RuntimeError("broken on purpose")
"""


def test_check_names_a_missing_package_and_where_it_goes(scripts_dir, capsys) -> None:
    write_scripts(scripts_dir, BROKEN)
    assert cli.main(["check", "--scripts", str(scripts_dir)]) == 1
    out, err = capsys.readouterr()
    assert (
        "FAIL admin/missing.py: import_error: ModuleNotFoundError: No module named "
        "'scriptgate_no_such_package' (line 1): add 'scriptgate_no_such_package' to "
        "requirements.txt in the scripts folder and install it"
    ) in err
    assert "FAIL syntax.py: import_error: SyntaxError" in err
    assert "FAIL api/nohandler.py: no_handler" in err
    assert "ok   api/hello.py" in out and "GET" in out and "timeout 30 s" in out
    assert "4 of 7 scripts OK" in out


def test_check_shows_each_scripts_methods_timeout_and_parameters(scripts_dir, capsys) -> None:
    write_scripts(scripts_dir, {"api/typed.py": TYPED})
    assert cli.main(["check", "--scripts", str(scripts_dir)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "api/typed.py" in x)
    assert line.split() == ["ok", "api/typed.py", "PUT", "timeout", "4", "s", "params:", "n"]


TYPED = 'METHODS = ["PUT"]\nTIMEOUT = 4\ndef main(request, n: int):\n    return n\n'


def test_help_speaks_to_a_new_user(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for expected in (
        'def main(request, name: str = "Guest"):',
        "curl 'http://127.0.0.1:5000/hello.py?name=Rico'",
        "X-API-Key: $API_KEY",
        "/_platform/docs",
        "serve",
        "check",
        "routes",
    ):
        assert expected in text


def test_bind_without_a_host_gets_one_clear_line(capsys) -> None:
    assert cli.main(["serve", "--bind", "5055", "--scripts", "."]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err.strip().splitlines() == [
        "configuration error: BIND: '5055' is not HOST:PORT (try 127.0.0.1:5055)"
    ]

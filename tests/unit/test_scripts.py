"""What a script returns and how it fails, as the client sees it."""

from __future__ import annotations

import os

import pytest

from tests.unit.conftest import API, log_records, write_scripts

RETURNS = {
    "dict": ("return {'a': 1}", 200, "application/json", b'{"a":1}\n'),
    "list": ("return [1, 2]", 200, "application/json", b"[1,2]\n"),
    "str": ("return 'hi'", 200, "text/plain; charset=utf-8", b"hi"),
    "bytes": ("return b'\\x00\\x01'", 200, "application/octet-stream", b"\x00\x01"),
    "none": ("return None", 204, None, b""),
    "tuple2": ("return {'x': 1}, 201", 201, "application/json", b'{"x":1}\n'),
    "tuple3": ("return 'made', 202, {'X-Extra': 'yes'}", 202, "text/plain; charset=utf-8", b"made"),
    "tuple_headers": ("return 'h', {'X-Extra': 'yes'}", 200, "text/plain; charset=utf-8", b"h"),
    "response": (
        "from flask import Response\n    return Response('raw', 418, content_type='text/x-raw')",
        418,
        "text/x-raw",
        b"raw",
    ),
    "generator": (
        "return (f'{n}\\n' for n in range(3))",
        200,
        "text/plain; charset=utf-8",
        b"0\n1\n2\n",
    ),
    "send_file": (
        "import io\n    from flask import send_file\n"
        "    return send_file(io.BytesIO(b'file!'), download_name='a.txt')",
        200,
        "text/plain; charset=utf-8",
        b"file!",
    ),
}


@pytest.mark.parametrize("name", list(RETURNS))
def test_return_conversion(make_app, scripts_dir, name):
    body, status, content_type, data = RETURNS[name]
    write_scripts(scripts_dir, {f"ret_{name}.py": f"def main(request):\n    {body}\n"})
    response = make_app().test_client().get(f"/ret_{name}.py")
    assert response.status_code == status
    if content_type:
        assert response.headers["Content-Type"] == content_type
    assert response.data == data
    if name in ("tuple3", "tuple_headers"):
        assert response.headers["X-Extra"] == "yes"


def test_handle_wins_over_main(make_app, scripts_dir):
    write_scripts(
        scripts_dir,
        {
            "both.py": (
                "def main(request):\n    return 'main'\ndef handle(request):\n    return 'handle'\n"
            )
        },
    )
    assert make_app().test_client().get("/both.py").data == b"handle"


def test_method_not_in_methods_is_405_with_allow(client):
    response = client.post("/api/hello.py", headers=API)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.get_json()["error"] == "method not allowed"
    assert "trace_id" in response.get_json()


def test_default_methods(client):
    assert client.post("/hello.py").status_code == 200
    assert client.head("/hello.py").status_code == 200
    response = client.delete("/hello.py")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD, POST"


def test_helpers_from_own_folder_and_lib(client):
    assert client.get("/api/reports/daily.py", headers=API).get_json() == {
        "value": 42,
        "prefix": "lib",
    }


FAULTS = {
    "raises": ("def main(request):\n    raise ValueError('boom /etc/secret')\n", 500, "exception"),
    "syntax": ("def main(request)\n    return 1\n", 500, "import"),
    "import_fails": (
        "import no_such_module_xyz\ndef main(request):\n    return 1\n",
        500,
        "import",
    ),
    "no_handler": ("def other(request):\n    return 1\n", 500, "import"),
    "sys_exit": ("import sys\ndef main(request):\n    sys.exit(3)\n", 500, "exception"),
    "exit_at_import": ("import sys\nsys.exit(1)\n", 500, "import"),
    "unserializable": ("def main(request):\n    return {'x': object()}\n", 500, "exception"),
    "bad_type": ("def main(request):\n    return 42\n", 500, "exception"),
    "recursion": ("def main(request):\n    return main(request)\n", 500, "exception"),
    "loops": ("def main(request):\n    while True:\n        pass\n", 504, "timeout"),
    "sleeps": (
        "import time\nTIMEOUT = 0.3\ndef main(request):\n    time.sleep(30)\n",
        504,
        "timeout",
    ),
    "import_loops": ("while True:\n    pass\n", 504, "timeout"),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_faults_get_contract_error_and_next_request_works(make_app, scripts_dir, log_file, name):
    source, status, kind = FAULTS[name]
    write_scripts(scripts_dir, {f"api/fault_{name}.py": source})
    client = make_app(script_timeout=0.5).test_client()
    response = client.get(f"/api/fault_{name}.py", headers=API)
    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == ("timeout" if status == 504 else "internal error")
    assert len(body["trace_id"]) == 32
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "/etc/secret" not in text and str(scripts_dir) not in text
    # The platform is fine afterwards.
    assert client.get("/api/hello.py", headers=API).status_code == 200
    errors = [r for r in log_records(log_file) if r["level"] == "ERROR"]
    assert errors[-1]["trace_id"] == body["trace_id"]
    assert errors[-1]["kind"] == kind
    assert "Traceback" in errors[-1]["exc_info"]
    if status == 504:  # the script's own deadline answered, and the log shows where it was
        deadline = 0.3 if "TIMEOUT = 0.3" in source else 0.5
        assert f"deadline of {deadline:g} s passed" in errors[-1]["exc_info"]
        assert f"fault_{name}.py" in errors[-1]["exc_info"]


def test_fault_is_counted_by_kind(make_app, scripts_dir):
    write_scripts(scripts_dir, {"api/boom.py": "def main(request):\n    raise RuntimeError\n"})
    app = make_app()
    app.test_client().get("/api/boom.py", headers=API)
    metrics = app.test_client().get("/_platform/metrics").get_data(as_text=True)
    assert (
        'scriptgate_script_errors_total{kind="exception",script="boom.py",zone="api"} 1.0'
        in metrics
    )


def _touch_later(path):
    """Make sure an edit changes the mtime even on coarse-grained filesystems."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_edit_takes_effect_on_next_request(make_app, scripts_dir):
    client = make_app().test_client()
    write_scripts(scripts_dir, {"live.py": "def main(request):\n    return 'one'\n"})
    assert client.get("/live.py").data == b"one"
    write_scripts(scripts_dir, {"live.py": "def main(request):\n    return 'two'\n"})
    assert client.get("/live.py").data == b"two"


def test_same_size_edit_in_same_instant_is_seen(make_app, scripts_dir):
    client = make_app().test_client()
    path = scripts_dir / "quick.py"
    path.write_text("def main(request):\n    return 'aaa'\n")
    assert client.get("/quick.py").data == b"aaa"
    st = os.stat(path)
    path.write_text("def main(request):\n    return 'bbb'\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: new inode?
    _touch_later(path)
    assert client.get("/quick.py").data == b"bbb"


def test_helper_edit_reloads_script(make_app, scripts_dir):
    client = make_app().test_client()
    assert client.get("/api/reports/daily.py", headers=API).get_json()["value"] == 42
    write_scripts(scripts_dir, {"api/reports/_helper.py": "def double(x):\n    return 3 * x\n"})
    _touch_later(scripts_dir / "api/reports/_helper.py")
    assert client.get("/api/reports/daily.py", headers=API).get_json()["value"] == 63


def test_delete_makes_404_and_add_makes_200(make_app, scripts_dir):
    client = make_app().test_client()
    assert client.get("/new.py").status_code == 404
    write_scripts(scripts_dir, {"new.py": "def main(request):\n    return 'new'\n"})
    assert client.get("/new.py").data == b"new"
    os.remove(scripts_dir / "new.py")
    assert client.get("/new.py").status_code == 404


def test_unchanged_script_is_imported_once(make_app, scripts_dir):
    write_scripts(
        scripts_dir,
        {
            "counted.py": (
                "import builtins\n"
                "builtins.SG_IMPORTS = getattr(builtins, 'SG_IMPORTS', 0) + 1\n"
                "def main(request):\n    return {'imports': builtins.SG_IMPORTS}\n"
            )
        },
    )
    client = make_app().test_client()
    counts = [client.get("/counted.py").get_json()["imports"] for _ in range(5)]
    assert counts[0] == counts[-1]


def test_same_named_helpers_in_two_folders_stay_apart(make_app, scripts_dir):
    write_scripts(
        scripts_dir,
        {
            "one/_h.py": "NAME = 'one'\n",
            "one/s.py": "from _h import NAME\ndef main(request):\n    return NAME\n",
            "two/_h.py": "NAME = 'two'\n",
            "two/s.py": "from _h import NAME\ndef main(request):\n    return NAME\n",
        },
    )
    client = make_app().test_client()
    assert client.get("/one/s.py").data == b"one"
    assert client.get("/two/s.py").data == b"two"


def test_body_over_limit_is_413_without_running(make_app, scripts_dir, tmp_path):
    marker = tmp_path / "ran"
    write_scripts(
        scripts_dir,
        {
            "upload.py": (
                f"def main(request):\n    open({str(marker)!r}, 'w').write('x')\n    return 'ok'\n"
            )
        },
    )
    client = make_app(max_body_bytes=100).test_client()
    response = client.post("/upload.py", data=b"x" * 101)
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload too large"
    assert not marker.exists()
    assert client.post("/upload.py", data=b"x" * 100).status_code == 200
    assert marker.exists()


def test_invalid_json_reaches_script_untouched(make_app, scripts_dir):
    write_scripts(scripts_dir, {"raw.py": "def main(request):\n    return request.get_data()\n"})
    body = b'{"not": json,,'
    response = make_app().test_client().post("/raw.py", data=body, content_type="application/json")
    assert response.status_code == 200
    assert response.data == body

"""Every command block of the README that can run here runs, as written, against a real
`scriptgate serve` of the example scripts with the demo keys (what `make run` serves).

A `# → ...` line after a command is what it must print: JSON is compared as JSON (any
trace id), anything else as text. A command that cannot run here must be listed in
NOT_HERE with the reason, so a new block cannot slip by untested.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import BIN, REPO, gunicorn

README = REPO / "README.md"
DEMO_KEYS = {"API_KEY": "demo-api-key", "ADMIN_API_KEY": "demo-admin-key"}
# command prefix -> why it does not run here
NOT_HERE = {
    "make run": "tests/integration/test_first_hour.py runs it (its install step needs PyPI)",
    "make test": "it is this test suite",
}
EXPECTED = "# → "
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)


def readme_commands() -> list[Command]:
    """The commands of every ```sh block, continuation lines joined, with their outputs."""
    commands: list[Command] = []
    for block in re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if line.startswith(EXPECTED):
                commands[-1].expected.append(line[len(EXPECTED) :])
            elif line.strip() and not line.startswith("#"):
                pending += line.rstrip("\\").rstrip() + " "
                if not line.endswith("\\"):
                    commands.append(Command(re.sub(r"\s+#.*$", "", pending.strip())))
                    pending = ""
    return commands


def same_output(actual: str, expected: list[str]) -> bool:
    wanted = "\n".join(expected)
    if wanted.startswith(("{", "[")):
        got, want = json.loads(actual), json.loads(wanted)
        if isinstance(got, dict) and "trace_id" in want:
            assert TRACE_ID.match(got.pop("trace_id", "")), got
            want.pop("trace_id")
        return bool(got == want)
    return actual.replace("\r\n", "\n").strip() == wanted.strip()


def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 12, "the README's command blocks were not found"
    work = tmp_path / "work"
    shutil.copytree(REPO / "scripts", work / "scripts")
    skipped: set[str] = set()
    ran = 0
    # One job worker, as `make run` has job workers: the job recipes wait for their runs.
    env = {**DEMO_KEYS, "JOB_WORKERS": "1"}
    with gunicorn(work / "scripts", tmp_path, workers=2, env=env) as server:
        address = server.url.removeprefix("http://")
        for command in commands:
            reason = next((p for p in NOT_HERE if command.text.startswith(p)), None)
            if reason is not None:
                skipped.add(reason)
                continue
            shell = command.text.replace("127.0.0.1:5000", address)
            shell = shell.replace(".venv-run/bin/", f"{BIN}/")
            result = subprocess.run(
                ["bash", "-c", shell], cwd=work, capture_output=True, text=True, timeout=60,
                env={**server.env, **DEMO_KEYS},
            )  # fmt: skip
            assert result.returncode == 0, f"{command.text}\n{result.stdout}{result.stderr}"
            if command.expected:
                assert same_output(result.stdout, command.expected), (
                    f"{command.text}\nprinted: {result.stdout}\nREADME: {command.expected}"
                )
            ran += 1
    assert skipped == set(NOT_HERE), f"stale NOT_HERE entries: {set(NOT_HERE) - skipped}"
    assert ran >= 10

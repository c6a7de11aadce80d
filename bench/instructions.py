"""Instructions per request (valgrind's callgrind) beside requests/s, for every contender,
each in one process called as gunicorn calls it (bench/inproc.py), with no HTTP.

    .venv/bin/python bench/instructions.py            # part of `make bench`; a few minutes
    .venv/bin/python bench/instructions.py --smoke    # seconds; proves the harness
    .venv/bin/python bench/instructions.py --exemplars  # exemplars on and off only

Seconds move with whatever else the machine runs; the instructions a request executes
do not, so a change to the hot path is judged by a number that repeats. Contenders:
bare Flask, bare Flask with opentelemetry-instrumentation-flask, the assembly and
Scriptgate, all with spans sampled out; then the export pair, the assembly and
Scriptgate both recording every span and sending it over OTLP/HTTP to the same local
sink (bench/otlp_sink.py), which counts them. Every contender runs the same script body
(bench/scripts/api/hello.py); the assembly and Scriptgate check the same key and
allowlist and believe the same proxy. Then Scriptgate with one feature left out at a
time says where its instructions go, and Scriptgate with spans exported but exemplars
off what a sampled call's exemplars cost (goal: at most 2% more instructions).

With runners (service/runners), a call's work is split: the worker's pipeline, then the
script in a runner process forked from the worker's zygote. callgrind follows children
(`--trace-children=yes`, one file per process), so the zygote and its runners are counted
too: the worker's counted requests come from its marks, the runner's from the dumps it
makes at each call's end (see `runner_per_call`). The zygote does nothing for a call to
a warm runner; its wake-ups every 0.5 s are reported apart. A runner's limits need two
allowances under valgrind: RLIMIT_AS covers valgrind's own mappings too (so
SCRIPT_MEMORY_LIMIT is raised for the count), and valgrind refuses to lower the
descriptor limit (RLIMIT_NOFILE) below the one it started with, so it is started with the
runner's (1,024) plus the 12 descriptors valgrind keeps for itself.

requests/s: interleaved rounds of each contender's loop (A1 B1 C1 ... A2 B2 ...), so a
busy spell hits all alike; the median round, and the paired ratio per round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import otlp_sink
from bench.procs import REPO, clean_env

INPROC = REPO / "bench" / "inproc.py"
VALGRIND = "/usr/bin/valgrind"
START_TIMEOUT_S = 120
RUNNER_OPEN_FILES = 1024  # service/runners/limits.py's OPEN_FILES
VALGRIND_OWN_FILES = 12  # descriptors valgrind reserves above its client's limit


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    app: str  # a bench/inproc.py builder
    export: bool = False
    without: tuple[str, ...] = ()  # Scriptgate features left out
    tracing_off: bool = False  # OTEL_SDK_DISABLED=true: no-op spans
    tree: str = ""  # where `service` comes from ("" = this checkout)

    @property
    def service(self) -> str:  # OTEL_SERVICE_NAME, so the sink counts each apart
        return f"bench-{self.key}"


BARE = Contender("bare", "bare Flask (floor)", "bare")
TRACED = Contender("traced_bare", "bare Flask + otel-instrumentation-flask", "traced_bare")
ASSEMBLY = Contender("assembly", "assembly", "assembly")
SCRIPTGATE = Contender("scriptgate", "Scriptgate", "scriptgate")
ASSEMBLY_EXPORT = Contender("assembly_export", "assembly, spans exported", "assembly", True)
SCRIPTGATE_EXPORT = Contender("scriptgate_export", "Scriptgate, spans exported", "scriptgate", True)
MAIN = (BARE, TRACED, ASSEMBLY, SCRIPTGATE, ASSEMBLY_EXPORT, SCRIPTGATE_EXPORT)
# Each leaves one feature out of SCRIPTGATE: the instructions it saves are that feature's.
BREAKDOWN = (
    Contender("sg_no_tracing", "the server span and trace ids", "scriptgate", tracing_off=True),
    Contender("sg_no_metrics", "Prometheus metrics", "scriptgate", without=("metrics",)),
    Contender("sg_no_log", "the JSON request log line", "scriptgate", without=("log",)),
    Contender("sg_no_access", "key, allowlist, proxy", "scriptgate", without=("access",)),
)

# Exemplars are written only for sampled calls: compared with SCRIPTGATE_EXPORT, whose
# every call is sampled and so leaves its trace id on three series.
EXEMPLARS_OFF = Contender(
    "sg_export_no_exemplars",
    "Scriptgate, spans exported, exemplars off",
    "scriptgate",
    True,
    without=("exemplars",),
)
EXEMPLAR_GOAL = 1.02


@dataclass(frozen=True)
class Sizes:
    counted: int  # requests counted under callgrind, after `warmup`
    warmup: int
    rounds: int  # timed rounds per contender
    per_round: int  # requests per timed round
    callgrind: tuple[Contender, ...]


FULL = Sizes(200, 60, 7, 500, (*MAIN, *BREAKDOWN, EXEMPLARS_OFF))
SMOKE = Sizes(10, 10, 1, 30, (ASSEMBLY, SCRIPTGATE))
EXEMPLARS = Sizes(200, 60, 0, 0, (SCRIPTGATE_EXPORT, EXEMPLARS_OFF))


def environment(contender: Contender, tmp: Path, sink: str) -> dict[str, str]:
    """What the contender reads at start-up: the bench server's settings."""
    work = tmp / contender.key
    (work / "metrics").mkdir(parents=True, exist_ok=True)
    env = {
        "API_KEY": "bench-api-key",
        "ADMIN_API_KEY": "bench-admin-key",
        "API_TRUSTED_IPS": "127.0.0.1/32",
        "TRUSTED_PROXIES": "127.0.0.1/32",
        "SCRIPTS_DIR": str(REPO / "bench" / "scripts"),
        "LOG_FILE": str(work / "framework.log"),
        "BENCH_LOG_FILE": str(work / "assembly.log"),
        "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
        "OTEL_SERVICE_NAME": contender.service,
    }
    if contender.export:
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = sink
    else:
        env["OTEL_TRACES_SAMPLER"] = "always_off"
    if contender.tracing_off:
        env["OTEL_SDK_DISABLED"] = "true"
    return clean_env(env)


def argv(contender: Contender, tmp: Path, *extra: str) -> list[str]:
    without = [arg for feature in contender.without for arg in ("--without", feature)]
    work = str(tmp / contender.key)
    tree = ["--tree", contender.tree] if contender.tree else []
    return [sys.executable, str(INPROC), contender.app, "--workdir", work, *without, *tree, *extra]


@dataclass(frozen=True)
class Counted:
    """Instructions per counted request, by process."""

    worker: float
    runner: float  # 0 where the script runs in the worker
    zygote_wake: float | None  # one idle wake-up of the zygote, where there is one

    @property
    def total(self) -> float:
        return self.worker + self.runner


def instructions(contender: Contender, sizes: Sizes, tmp: Path, sink: str) -> Counted:
    """Instructions per counted request, the worker's and its runner's: callgrind dumps
    at each getpgid() (the worker's marks; its second dump holds the counted requests of
    every thread) and at each waitpid() (a runner's, once per call; a zygote's, at each
    wake-up)."""
    out = tmp / f"{contender.key}.callgrind"
    out.mkdir(parents=True, exist_ok=True)
    command = [
        VALGRIND,
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={out}/cg.%p",
        "--dump-before=getpgid",
        "--dump-before=waitpid",
        *argv(contender, tmp, "--count", str(sizes.counted), "--warmup", str(sizes.warmup)),
        "--marks",
    ]
    env = environment(contender, tmp, sink)
    env["SCRIPT_MEMORY_LIMIT"] = "64G"  # valgrind's own mappings are in a runner's RLIMIT_AS
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        preexec_fn=_valgrind_files_limit,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{contender.key} under callgrind: {done.stderr[-2000:]}")
    tree = json.loads((tmp / contender.key / "tree.json").read_text())
    dumps = _dumps(out)
    worker = [n for n, trigger in dumps.get(tree["worker"], []) if "getpgid" in trigger]
    if len(worker) < 2:
        raise RuntimeError(f"{contender.key}: callgrind made {len(worker)} dumps at the marks")
    zygotes = tree["children"][str(tree["worker"])]
    runners = [r for z in zygotes for r in tree["children"].get(str(z), [])]
    wakes = [n for z in zygotes for n, trigger in dumps.get(z, [])[1:] if "waitpid" in trigger]
    return Counted(
        worker=worker[1] / sizes.counted,
        runner=sum(runner_per_call(dumps.get(r, []), sizes) for r in runners),
        zygote_wake=statistics.median(wakes) if wakes else None,
    )


def runner_per_call(dumps: list[tuple[int, str]], sizes: Sizes) -> float:
    """A runner's instructions per counted call. It calls waitpid() once per call, after
    its answer (reaping a script's children), so its dump k holds the end of call k-1 and
    all of call k until its answer; the first holds the fork, the import and call 1.
    Dumps warmup+1 .. warmup+counted are the counted calls, whole. A runner that made any
    other number of dumps breaks that assumption, and fails loudly."""
    calls = [n for n, trigger in dumps if "waitpid" in trigger]
    served = sizes.warmup + sizes.counted
    if len(calls) != served:
        raise RuntimeError(f"a runner made {len(calls)} dumps for {served} calls")
    return sum(calls[sizes.warmup :]) / sizes.counted


def _dumps(folder: Path) -> dict[int, list[tuple[int, str]]]:
    """Per process, its dumps in order: (instructions, what triggered it)."""
    found: dict[int, list[tuple[int, int, str]]] = {}
    for path in folder.glob("cg.*"):
        _, pid, *part = path.name.split(".")
        summary, trigger = 0, ""
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("desc: Trigger:"):
                    trigger = line
                elif line.startswith(("summary:", "totals:")):
                    summary = int(line.split()[1])
                    break
        order = int(part[0]) if part else 1 << 30  # the file without a number is the last
        found.setdefault(int(pid), []).append((order, summary, trigger))
    return {pid: [(n, t) for _, n, t in sorted(rows)] for pid, rows in found.items()}


def _valgrind_files_limit() -> None:
    limit = RUNNER_OPEN_FILES + VALGRIND_OWN_FILES
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


class Looper:
    """One contender process that runs timed loops when asked (bench/inproc.py --serve)."""

    def __init__(self, contender: Contender, tmp: Path, sink: str, warmup: int) -> None:
        self.contender = contender
        self.errors = tmp / f"{contender.key}.err"
        env = environment(contender, tmp, sink)
        with open(self.errors, "wb") as errors:
            self.proc = subprocess.Popen(
                argv(contender, tmp, "--serve", "--warmup", str(warmup)),
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        self.requests = warmup

    def _reply(self) -> str:
        timer = threading.Timer(START_TIMEOUT_S, self.proc.kill)  # a stuck child ends
        timer.start()
        try:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
        finally:
            timer.cancel()
        if not line:
            tail = self.errors.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.contender.key} exited:\n{tail}")
        return line.strip()

    def ready(self) -> None:
        if self._reply() != "ready":
            raise RuntimeError(f"{self.contender.key} did not start")

    def loop(self, count: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds) for `count` requests, spans flushed."""
        self.proc.stdin.write(f"{count}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        wall, cpu = self._reply().split()
        self.requests += count
        return float(wall), float(cpu)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def loopers(contenders: tuple[Contender, ...], *args: object) -> Iterator[list[Looper]]:
    started: list[Looper] = []
    try:
        for contender in contenders:
            started.append(Looper(contender, *args))  # type: ignore[arg-type]
        for looper in started:
            looper.ready()
        yield started
    finally:
        for looper in started:
            looper.stop()


def timed_rounds(sizes: Sizes, tmp: Path, sink: otlp_sink.Sink) -> dict[str, dict]:
    out: dict[str, dict] = {c.key: {"rounds": []} for c in MAIN}
    with loopers(MAIN, tmp, sink.endpoint, sizes.warmup) as running:
        for _ in range(sizes.rounds):
            for looper in running:
                wall, cpu = looper.loop(sizes.per_round)
                out[looper.contender.key]["rounds"].append(
                    {"rps": sizes.per_round / wall, "cpu_us": cpu / sizes.per_round * 1e6}
                )
    for looper in running:
        spans = sink.count(looper.contender.service)
        out[looper.contender.key]["spans_per_request"] = round(spans / looper.requests, 2)
    return out


def paired(rounds: dict[str, dict], key: str, base: str) -> float:
    """Median over rounds of key's requests/s over base's in the same round."""
    mine, theirs = rounds[key]["rounds"], rounds[base]["rounds"]
    return round(
        statistics.median(a["rps"] / b["rps"] for a, b in zip(mine, theirs, strict=True)), 3
    )


def count_instructions(sizes: Sizes, tmp: Path, sink: str) -> dict[str, float]:
    """Each of sizes.callgrind's contenders under callgrind, two at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        counted = pool.map(lambda c: instructions(c, sizes, tmp, sink), sizes.callgrind)
        return {c.key: n for c, n in zip(sizes.callgrind, counted, strict=True)}


def exemplar_cost(counts: dict[str, float]) -> dict | None:
    """Instructions per sampled call with exemplars on and off, and their ratio."""
    on, off = counts.get(SCRIPTGATE_EXPORT.key), counts.get(EXEMPLARS_OFF.key)
    if on is None or off is None:
        return None
    return {
        "on_k_instructions": _k(on),
        "off_k_instructions": _k(off),
        "ratio": round(on / off, 4),
        "goal": EXEMPLAR_GOAL,
    }


def measure_exemplars(tmp: Path) -> dict:
    """Only the exemplars on/off pair: instructions, no timed rounds."""
    tmp.mkdir(parents=True, exist_ok=True)
    with otlp_sink.running() as sink:
        counts = count_instructions(EXEMPLARS, tmp, sink.endpoint)
    return {"sizes": {"counted": EXEMPLARS.counted}, "exemplars": exemplar_cost(counts)}


def measure(sizes: Sizes, tmp: Path) -> dict:
    """The whole measurement: timed rounds first (alone), then callgrind two at a time."""
    tmp.mkdir(parents=True, exist_ok=True)
    with otlp_sink.running() as sink:
        rounds = timed_rounds(sizes, tmp, sink)
        counts = count_instructions(sizes, tmp, sink.endpoint)
    results: dict = {"sizes": {"counted": sizes.counted, "rounds": sizes.rounds}, "rows": {}}
    for contender in MAIN:
        timing = rounds[contender.key]
        base = "assembly_export" if contender.export else "assembly"
        results["rows"][contender.key] = {
            "label": contender.label,
            "base": base,  # the assembly of the same mode, what the ratios compare with
            "k_instructions": _k(counts.get(contender.key)),
            "k_in_runner": _k(counts.get(contender.key), "runner"),
            "requests_per_s": round(statistics.median(r["rps"] for r in timing["rounds"])),
            "cpu_us": round(statistics.median(r["cpu_us"] for r in timing["rounds"]), 1),
            "vs_assembly_rps": paired(rounds, contender.key, base),
            "vs_bare_rps": paired(rounds, contender.key, "bare"),
            "spans_per_request": timing["spans_per_request"],
        }
    results["breakdown"] = {
        c.key: {"label": c.label, "k_instructions": _k(counts.get(c.key))}
        for c in BREAKDOWN
        if c.key in counts
    }
    results["exemplars"] = exemplar_cost(counts)
    return results


def _k(count: Counted | None, part: str = "total") -> float | None:
    return None if count is None else round(getattr(count, part) / 1000, 1)


def main(argv_: list[str] | None = None) -> int:
    from bench import instructions_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--exemplars", action="store_true", help="only exemplars on and off, under callgrind"
    )
    args = parser.parse_args(argv_)
    if not Path(VALGRIND).exists():
        print("valgrind not found: install the valgrind package (`make debs`)", file=sys.stderr)
        return 2
    if args.exemplars:
        with tempfile.TemporaryDirectory(prefix="scriptgate-instructions-") as tmp:
            print(instructions_report.exemplars_text(measure_exemplars(Path(tmp))))
        return 0
    with tempfile.TemporaryDirectory(prefix="scriptgate-instructions-") as tmp:
        results = measure(SMOKE if args.smoke else FULL, Path(tmp))
    print(instructions_report.text(results))
    print(instructions_report.goals_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

requests/s: interleaved rounds of each contender's loop (A1 B1 C1 ... A2 B2 ...), so a
busy spell hits all alike; the median round, and the paired ratio per round.
"""

from __future__ import annotations

import argparse
import contextlib
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


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    app: str  # a bench/inproc.py builder
    export: bool = False
    without: tuple[str, ...] = ()  # Scriptgate features left out
    tracing_off: bool = False  # OTEL_SDK_DISABLED=true: no-op spans

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
    return [sys.executable, str(INPROC), contender.app, "--workdir", work, *without, *extra]


def instructions(contender: Contender, sizes: Sizes, tmp: Path, sink: str) -> float:
    """Instructions per counted request: callgrind dumps at each getpgid(), the second
    dump holding the counted requests of every thread."""
    out = tmp / f"{contender.key}.callgrind"
    counted = str(sizes.counted)
    command = [
        VALGRIND,
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--dump-before=getpgid",
        *argv(contender, tmp, "--count", counted, "--warmup", str(sizes.warmup), "--marks"),
    ]
    done = subprocess.run(
        command,
        env=environment(contender, tmp, sink),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    dump = Path(f"{out}.2")
    if done.returncode != 0 or not dump.exists():
        raise RuntimeError(f"{contender.key} under callgrind: {done.stderr[-2000:]}")
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1]) / sizes.counted
    raise RuntimeError(f"{dump} has no summary line")


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


def _k(count: float | None) -> float | None:
    return None if count is None else round(count / 1000, 1)


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

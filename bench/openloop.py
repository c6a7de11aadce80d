"""Open-loop load: every call starts at a time fixed before the run, whatever the server does.

A closed loop (wrk, or a thread that sends its next call once the last is answered) slows
down with the server it measures: a stalled server is sent fewer calls, and the calls it
would have kept waiting are never timed (coordinated omission). Here each call has a start
time fixed in advance. At that time a dispatcher hands it to a thread of a bounded pool,
and its latency counts from that time, so a stall shows in full. A call that finds every
thread of its pool busy is not sent and counts as failed, as does one that gets no 200
answer within its timeout.

Written here because the load generators at hand do not do this: wrk and hey are closed
loops (hey's rate limit paces each of its closed-loop workers), and wrk2 and vegeta, which
hold a fixed rate, are not packaged for Debian.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass

from bench.servers import http_get

FAST, SLOW, HEALTH = "fast", "slow", "health"
POOL_FULL = "pool full"
TIMEOUT = "timeout"
NOT_SENT = "not sent"  # the run was cut short before its time
LEAD_S = 0.05  # the dispatcher starts this long before the first due time


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the window opens
    kind: str


def arrivals(
    rate: float, seconds: float, seed: int, slow_every: int, probe_period: float
) -> list[Arrival]:
    """Poisson arrivals of calls at `rate` a second, every `slow_every`-th one SLOW, the
    rest FAST, and a HEALTH probe in the middle of every `probe_period`.

    The seed fixes the schedule: every design, and every run, is sent the same calls at
    the same times.
    """
    rng = random.Random(seed)
    calls: list[Arrival] = []
    at = rng.expovariate(rate)
    while at < seconds:
        slow = len(calls) % slow_every == slow_every - 1
        calls.append(Arrival(at, SLOW if slow else FAST))
        at += rng.expovariate(rate)
    probes = [Arrival((k + 0.5) * probe_period, HEALTH) for k in range(int(seconds / probe_period))]
    return sorted(calls + probes, key=lambda a: a.at)


@dataclass(frozen=True)
class Target:
    port: int
    path: str
    headers: Mapping[str, str]
    timeout_s: float
    pool: Pool


@dataclass(frozen=True)
class Outcome:
    kind: str
    at: float  # when it was due, seconds after the window opened
    lag_ms: float  # how late the client sent it (its own delay, counted in ms too)
    ms: float  # from when it was due to its answer or failure
    ok: bool  # answered 200 within its timeout
    error: str  # why not ok: "timeout", "pool full", "status 503", an exception's name


class Pool:
    """At most `size` calls in flight, each on a thread of its own."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.peak = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
        self.futures: list[Future] = []

    def try_submit(self, call: Callable[[], None]) -> bool:
        """Start `call` on a free thread; False, without waiting, when none is free."""
        with self._lock:
            if self._in_flight >= self.size:
                return False
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
        self.futures.append(self._executor.submit(self._run, call))
        return True

    def _run(self, call: Callable[[], None]) -> None:
        try:
            call()
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` for the calls in flight; True when all have ended."""
        pending = wait_all(self.futures, timeout=timeout).not_done
        self._executor.shutdown(wait=False, cancel_futures=True)
        return not pending


class OpenLoop:
    """Sends a schedule of arrivals to one server, each kind to its own target."""

    def __init__(self, schedule: list[Arrival], targets: Mapping[str, Target]) -> None:
        self.schedule = schedule
        self.targets = targets
        self.outcomes: list[Outcome] = []  # appended from many threads (atomic in CPython)
        self._t0 = 0.0
        self._stop = threading.Event()

    def run(self, sample: Callable[[], None], period_s: float = 1.0) -> None:
        """Dispatch the whole schedule, calling `sample` every `period_s` meanwhile; the
        last calls are still in flight on return (see finish)."""
        self._t0 = time.monotonic() + LEAD_S
        dispatcher = threading.Thread(target=self._dispatch, name="openloop", daemon=True)
        dispatcher.start()
        last = self.schedule[-1].at if self.schedule else 0.0
        deadline = self._t0 + last + 2 * period_s
        try:
            while dispatcher.is_alive() and time.monotonic() < deadline:
                sample()
                dispatcher.join(period_s)
        finally:
            self._stop.set()
            dispatcher.join(period_s)

    def finish(self) -> list[Outcome]:
        """Every call's outcome, once each has been answered or has timed out."""
        longest = max(t.timeout_s for t in self.targets.values())
        for pool in {id(t.pool): t.pool for t in self.targets.values()}.values():
            pool.close(longest + 5)
        return sorted(self.outcomes, key=lambda o: o.at)

    def _dispatch(self) -> None:
        for index, arrival in enumerate(self.schedule):
            if self._stop.wait(self._t0 + arrival.at - time.monotonic()):
                self.outcomes.extend(
                    Outcome(a.kind, a.at, 0.0, 0.0, False, NOT_SENT) for a in self.schedule[index:]
                )
                return
            target = self.targets[arrival.kind]
            if not target.pool.try_submit(lambda a=arrival, t=target: self._call(a, t)):
                self.outcomes.append(Outcome(arrival.kind, arrival.at, 0.0, 0.0, False, POOL_FULL))

    def _call(self, arrival: Arrival, target: Target) -> None:
        due = self._t0 + arrival.at
        sent = time.monotonic()
        error = ""
        try:
            # The socket timeout bounds each wait; the total is checked against it below.
            remaining = max(0.001, due + target.timeout_s - sent)
            status = http_get(target.port, target.path, target.headers, remaining)[0]
            if status != 200:
                error = f"status {status}"
        except TimeoutError:
            error = TIMEOUT
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__
        ended = time.monotonic()
        if not error and ended - due > target.timeout_s:
            error = TIMEOUT
        self.outcomes.append(
            Outcome(
                arrival.kind,
                arrival.at,
                round((sent - due) * 1000, 2),
                round((ended - due) * 1000, 2),
                not error,
                error,
            )
        )


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest rank: the smallest value with at least `pct`% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil, without float rounding
    return round(ordered[int(rank) - 1], 1)


def latency(outcomes: list[Outcome], timeout_s: float) -> dict:
    """p50, p99 over every call, a failed one counting as its timeout; max of the answered.

    The p99 is also given from when each call was sent, not due: the difference is the
    client's own delay, which a busy machine inflates.
    """
    as_ms = [o.ms if o.ok else timeout_s * 1000 for o in outcomes]
    from_send = [o.ms - o.lag_ms if o.ok else timeout_s * 1000 for o in outcomes]
    answered = [o.ms for o in outcomes if o.ok]
    return {
        "calls": len(outcomes),
        "ok": len(answered),
        "failed": len(outcomes) - len(answered),
        "p50_ms": percentile(as_ms, 50),
        "p99_ms": percentile(as_ms, 99),
        "max_ms": round(max(answered), 1) if answered else None,
        "p99_from_send_ms": percentile(from_send, 99),
    }


def failures(outcomes: list[Outcome]) -> dict[str, int]:
    """How many calls failed, by reason."""
    counts: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            counts[o.error] = counts.get(o.error, 0) + 1
    return counts


def client_lag(outcomes: list[Outcome]) -> dict:
    """How late the client itself sent the calls it sent: a busy client shows here."""
    lags = [o.lag_ms for o in outcomes if o.error not in (POOL_FULL, NOT_SENT)]
    return {"lag_p99_ms": percentile(lags, 99), "lag_max_ms": max(lags, default=None)}

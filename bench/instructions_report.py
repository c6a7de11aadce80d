"""Tables and goals for bench/instructions.py: instructions beside requests/s, where
Scriptgate's instructions go, and the goals of the instruction-count issue."""

from __future__ import annotations

from bench.report import Goal


def _rows(results: dict) -> dict:
    return results["instructions"]["rows"]


def instruction_ratio(rows: dict, key: str, base: str) -> float | None:
    mine, theirs = rows[key]["k_instructions"], rows[base]["k_instructions"]
    return None if mine is None or not theirs else round(mine / theirs, 3)


def goals() -> list[Goal]:
    """Judged on a results dict holding this harness's output under "instructions"."""
    return [
        Goal(
            "hello, sampled out: >= 1.2x the assembly's req/s (in process)",
            lambda r: _rows(r)["scriptgate"]["vs_assembly_rps"],
            1.2,
            True,
            "x",
        ),
        Goal(
            "hello, sampled out: <= 0.8x the assembly's instructions/request",
            lambda r: instruction_ratio(_rows(r), "scriptgate", "assembly"),
            0.8,
            False,
            "x",
        ),
        Goal(
            "hello, spans exported: >= 1.0x the assembly's req/s (in process)",
            lambda r: _rows(r)["scriptgate_export"]["vs_assembly_rps"],
            1.0,
            True,
            "x",
        ),
        Goal(
            "hello, spans exported: exemplars <= 1.02x instructions without",
            lambda r: r["instructions"]["exemplars"]["ratio"],
            1.02,
            False,
            "x",
        ),
    ]


def _cells(rows: dict, key: str) -> tuple[str, ...]:
    row = rows[key]
    k = row["k_instructions"]
    ratio = instruction_ratio(rows, key, row["base"]) if k is not None else None
    return (
        row["label"],
        "-" if k is None else f"{k:,.0f}",
        "-" if ratio is None else f"{ratio:.2f}x",
        f"{row['requests_per_s']:,}",
        f"{row['cpu_us']:.0f}",
        f"{row['vs_assembly_rps']:.2f}x",
        f"{row['vs_bare_rps']:.2f}x",
        f"{row['spans_per_request']:g}",
    )


HEADER = (
    "contender",
    "k instr/req",
    "instr vs asm",
    "req/s",
    "CPU µs/req",
    "req/s vs asm",
    "vs bare",
    "spans/req",
)


def breakdown(inst: dict) -> list[tuple[str, float, float]]:
    """(what, k instructions, µs) for each part of Scriptgate's request.

    A feature's share is what leaving it out saves; the floor is bare Flask running the
    same script body; the rest is the pipeline itself and the runner process around the
    script (routing, the frames both ways, the runner's own request, conversion). µs are
    instructions at Scriptgate's own measured rate.
    """
    rows, parts = inst["rows"], inst.get("breakdown") or {}
    total = rows["scriptgate"]["k_instructions"]
    floor = rows["bare"]["k_instructions"]
    if total is None or floor is None or not parts:
        return []
    per_us = total / rows["scriptgate"]["cpu_us"]  # k instructions per µs
    out = [("bare Flask and the script body (the floor)", floor, floor / per_us)]
    for part in parts.values():
        if part["k_instructions"] is not None:
            saved = total - part["k_instructions"]
            out.append((part["label"], saved, saved / per_us))
    rest = total - sum(k for _, k, _ in out)
    out.append(("the pipeline and the runner: lookup, frames, conversion", rest, rest / per_us))
    out.append(("total", total, total / per_us))
    return out


def _line(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    """The first cell left-aligned, the figures right-aligned."""
    pairs = zip(cells, widths, strict=True)
    return "".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(pairs))


def text(inst: dict) -> str:
    rows = inst["rows"]
    widths = (44, 12, 13, 9, 11, 13, 9, 10)
    lines = [
        f"instructions per request (callgrind, {inst['sizes']['counted']} requests counted) "
        f"and in-process requests/s (median of {inst['sizes']['rounds']} interleaved rounds):",
        "".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(HEADER, widths, strict=True))
        ),
    ]
    for key in rows:
        cells = _cells(rows, key)
        lines.append(
            "".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    parts = breakdown(inst)
    if parts:
        lines.append("\nwhere Scriptgate's request goes (what leaving each part out saves):")
        lines += [f"  {what:<56}{k:>8,.0f} k instr {us:>7.1f} µs" for what, k, us in parts]
    if inst.get("exemplars"):
        lines.append("\n" + exemplars_text(inst))
    return "\n".join(lines)


def exemplars_text(inst: dict) -> str:
    """Exemplars on and off: instructions per sampled call, and the goal."""
    cost = inst.get("exemplars")
    if not cost:
        return "exemplars on/off: not measured"
    verdict = "PASS" if cost["ratio"] <= cost["goal"] else "MISS"
    return (
        f"exemplars (spans exported, every call sampled; {inst['sizes']['counted']} requests "
        f"counted): on {cost['on_k_instructions']:,.1f} k instructions/request, off "
        f"{cost['off_k_instructions']:,.1f} k: {cost['ratio']:.4f}x "
        f"(goal <= {cost['goal']}x: {verdict})"
    )


def markdown(inst: dict) -> str:
    rows = inst["rows"]
    lines = ["| " + " | ".join(HEADER) + " |", "| --- |" + " ---: |" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(_cells(rows, key)) + " |" for key in rows]
    parts = breakdown(inst)
    if parts:
        lines += [
            "",
            "| where Scriptgate's request goes | k instructions | µs |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {what} | {k:,.0f} | {us:.1f} |" for what, k, us in parts]
    return "\n".join(lines)


def goals_table(results: dict) -> str:
    judged = [g.judge({"instructions": results}) for g in goals()]
    return "\n".join(
        f"  {g['verdict']:<5} {g['goal']:<66} measured {g['value']}{g['unit']}" for g in judged
    )

"""The harness every scenario runs on: caller threads and their timing, latency summaries, and
the result model (tables, goals, notes) with its Markdown.

Every get of :func:`run_callers` is timed on its own with ``time.perf_counter_ns`` (about 0.1 µs
per get, the same for every system) into ``array('q')`` buffers, so millions of samples stay
cheap; :func:`run_tight` counts calls without timing each, for costs well under a microsecond.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = [
    "CallerRun",
    "Goal",
    "OpFactory",
    "Result",
    "Scenario",
    "Table",
    "fmt",
    "judged",
    "ratio",
    "render_section",
    "run_callers",
    "run_storm",
    "run_tight",
    "storm_row",
    "summarize",
]

# Builds the operation one caller thread repeats (called once per thread, with its index).
OpFactory = Callable[[int], Callable[[], object]]


@dataclasses.dataclass(frozen=True)
class CallerRun:
    """What a timed run of caller threads produced. With ``buckets > 1`` each get's latency is
    filed under the index its op returned (e.g. 1 for a slow tenant, 0 for the others)."""

    threads: int
    window_s: float  # from the window start to the completion of the last counted get
    window_start: float  # time.monotonic() (the fake server's clock) at the window start
    window_end: float  # time.monotonic() when callers stopped starting gets
    by_bucket: list[array[int]]
    errors: int
    first_error: str | None

    @property
    def latencies_ns(self) -> array[int]:
        merged: array[int] = array("q")
        for bucket in self.by_bucket:
            merged.extend(bucket)
        return merged

    @property
    def gets(self) -> int:
        return sum(len(bucket) for bucket in self.by_bucket)

    @property
    def throughput(self) -> float:
        return self.gets / self.window_s if self.window_s > 0 else 0.0

    def row(self, system: str, **extra: Any) -> dict[str, Any]:
        """The usual table row: gets, gets/s, latency percentiles, then ``extra``, errors."""
        return {
            "system": system,
            "gets": self.gets,
            "gets/s": self.throughput,
            **summarize(self.latencies_ns),
            **extra,
            "errors": self.errors,
        }


def _start_together(threads: int, body: Callable[[int], None]) -> Callable[[], None]:
    """Start ``threads`` threads running ``body(index)`` after one barrier; the returned
    function passes the barrier and joins them (so the caller may set shared state first)."""
    barrier = threading.Barrier(threads + 1)

    def run(index: int) -> None:
        barrier.wait()
        body(index)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()

    def go() -> None:
        barrier.wait()
        for worker in workers:
            worker.join()

    return go


def run_callers(
    threads: int,
    make_op: OpFactory,
    *,
    warmup_s: float,
    measure_s: float,
    think_s: float = 0.0,
    buckets: int = 1,
) -> CallerRun:
    """``threads`` callers repeat their op for ``warmup_s + measure_s``, timing every call and
    sleeping ``think_s`` (the business call) after each; gets that start in the measured window
    count. The window ends at the completion of the last of them (a get stuck behind a lock
    when the window closes counts, and so does the time it took)."""
    ops = [make_op(i) for i in range(threads)]
    mine = [[array("q") for _ in range(buckets)] for _ in range(threads)]
    last_done = [0] * threads
    errors: list[str] = []
    bounds = [0, 0]  # set before the barrier is passed, so before any caller reads them

    def caller(index: int) -> None:
        op, buffers, clock = ops[index], mine[index], time.perf_counter_ns
        start, end = bounds
        while (t0 := clock()) < end:
            bucket: object = 0
            try:
                bucket = op()
            except Exception as exc:
                errors.append(repr(exc)[:300])
            t1 = clock()
            if t0 >= start:
                buffers[bucket if isinstance(bucket, int) and buckets > 1 else 0].append(t1 - t0)
                last_done[index] = t1
            if think_s:
                time.sleep(think_s)

    go = _start_together(threads, caller)
    mono = time.monotonic()
    bounds[0] = time.perf_counter_ns() + int(warmup_s * 1e9)
    bounds[1] = bounds[0] + int(measure_s * 1e9)
    go()
    merged = [array("q") for _ in range(buckets)]
    for buffers in mine:
        for i, buffer in enumerate(buffers):
            merged[i].extend(buffer)
    return CallerRun(
        threads=threads,
        window_s=(max(bounds[1], *last_done) - bounds[0]) / 1e9,
        window_start=mono + warmup_s,
        window_end=mono + warmup_s + measure_s,
        by_bucket=merged,
        errors=len(errors),
        first_error=errors[0] if errors else None,
    )


def run_tight(
    threads: int, make_op: OpFactory, *, warmup_s: float, measure_s: float, batch: int = 200
) -> float:
    """Calls per second of ``threads`` callers repeating their op in batches of ``batch`` with
    one clock read per batch (no per-call timing); batches started in the window count."""
    ops = [make_op(i) for i in range(threads)]
    counted = [(0, 0)] * threads  # (calls, completion of the last counted batch)
    bounds = [0, 0]

    def caller(index: int) -> None:
        op, reps, clock = ops[index], range(batch), time.perf_counter_ns
        start, end = bounds
        calls = done = 0
        while (t0 := clock()) < end:
            for _ in reps:
                op()
            if t0 >= start:
                calls, done = calls + batch, clock()
        counted[index] = (calls, done)

    go = _start_together(threads, caller)
    bounds[0] = time.perf_counter_ns() + int(warmup_s * 1e9)
    bounds[1] = bounds[0] + int(measure_s * 1e9)
    go()
    window = max(bounds[1], *(done for _, done in counted)) - bounds[0]
    return sum(calls for calls, _ in counted) / (window / 1e9)


def run_storm(
    callers: int, op: Callable[[], object], *, release_at: float | None = None
) -> tuple[array[int], int]:
    """``callers`` threads call ``op`` once, released together (at ``release_at``, a
    ``time.monotonic()``, if given): their latencies and how many raised."""
    latencies: array[int] = array("q")
    errors: list[Exception] = []

    def caller(_: int) -> None:
        t0 = time.perf_counter_ns()
        try:
            op()
        except Exception as exc:
            errors.append(exc)
        latencies.append(time.perf_counter_ns() - t0)

    go = _start_together(callers, caller)
    if release_at is not None:
        time.sleep(max(0.0, release_at - time.monotonic()))
    go()
    return latencies, len(errors)


def storm_row(
    system: str, latencies_ns: Sequence[int], errors: int, stats: dict[str, Any]
) -> dict[str, Any]:
    """A storm's table row, with the fake's stats (``FakeFeishuProcess.stats``) since it began."""
    return {
        "system": system,
        "callers": len(latencies_ns),
        "upstream": stats["requests"],
        "peak concurrent upstream": stats["max_in_flight_per_key"],
        **summarize(latencies_ns),
        "errors": errors,
    }


def summarize(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50, p99 and max in milliseconds (nearest rank; NaN without samples)."""
    if not latencies_ns:
        return {"p50 ms": math.nan, "p99 ms": math.nan, "max ms": math.nan}
    ordered = sorted(latencies_ns)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1e6

    return {"p50 ms": rank(0.5), "p99 ms": rank(0.99), "max ms": ordered[-1] / 1e6}


def judged(ok: bool, *, smoke: bool) -> bool | None:
    """A goal's verdict: none in a smoke run, whose sizes mean nothing."""
    return None if smoke else ok


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


# --- results -------------------------------------------------------------------------------


@dataclasses.dataclass
class Table:
    """Rows keyed by column header; a header with ``×`` in it holds ratios."""

    title: str
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def find(self, **match: Any) -> dict[str, Any] | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in match.items())), None)


@dataclasses.dataclass
class Goal:
    goal: str
    target: str
    measured: str
    met: bool | None  # None: informational, or not judged in this run


@dataclasses.dataclass
class Result:
    """What one scenario measured; serialised to ``<name>.json`` as it is."""

    name: str
    title: str
    method: str  # what was run, how, with which sizes (Markdown)
    tables: list[Table] = dataclasses.field(default_factory=list)
    goals: list[Goal] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        fields = {f.name for f in dataclasses.fields(cls)} - {"tables", "goals"}
        return cls(
            tables=[Table(**t) for t in data.get("tables", [])],
            goals=[Goal(**g) for g in data.get("goals", [])],
            **{k: v for k, v in data.items() if k in fields},
        )


def fmt(value: Any, unit: str = "") -> str:
    """A number as the tables show it: three significant digits, thousands grouped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str | bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}{unit}"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.3g}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"


def _cell(column: str, value: Any) -> str:
    return fmt(value, "×" if "×" in column and not isinstance(value, int) else "")


def render_table(table: Table) -> list[str]:
    columns = list(dict.fromkeys(c for row in table.rows for c in row))
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c == "system" else "---:" for c in columns) + "|",
        *("| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |" for row in table.rows),
    ]


def render_section(result: Result, *, console: bool = False) -> list[str]:
    """A scenario's section of RESULTS.md (or, ``console``, its summary printed after it ran:
    no method, and the goals, which RESULTS.md gathers in a table of its own)."""
    lines = [] if console else [result.method, ""]
    for table in result.tables:
        lines += [table.title if console else f"**{table.title}**", "", *render_table(table), ""]
    lines += [*(f"- {note}" for note in result.notes), *([""] if result.notes else [])]
    if console:
        lines += [f"goal: {g.goal}: {g.target}; measured {g.measured}" for g in result.goals]
    lines += [f"*Scenario wall time: {result.elapsed_s:.1f} s.*", ""]
    return lines


SizesT = TypeVar("SizesT")


@dataclasses.dataclass(frozen=True)
class Scenario(Generic[SizesT]):
    """One scenario as ``run.py`` lists it: its measuring function with its ``full`` and
    ``quick`` (smoke run) sizes. ``compare`` adds goals against the scenario's previous result
    in the output directory; ``write_files`` writes its other files (a plot) and returns a line
    to print, or None."""

    name: str  # the results file (<name>.json) and ``--only NAME``
    run: Callable[[SizesT], Result]
    full: SizesT
    quick: SizesT
    compare: Callable[[Result, Result], None] | None = None
    write_files: Callable[[Result, Path], str | None] | None = None

    def measure(self, *, quick: bool) -> Result:
        return self.run(self.quick if quick else self.full)

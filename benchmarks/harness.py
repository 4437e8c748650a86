"""Measurement harness: caller threads, per-get latency recording, percentiles and CDFs.

Every get is timed individually with ``time.perf_counter_ns`` (about 0.1 µs of overhead per get,
the same for every system; the "oracle" rows show that floor). Latencies are kept in
``array('q')`` buffers so that millions of samples stay cheap. :func:`run_tight` counts calls
without timing each one, for per-call costs well under a microsecond.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "CallerRun",
    "LatencyStats",
    "OpFactory",
    "TightRun",
    "cdf_points",
    "merge_runs",
    "merge_tight",
    "run_callers",
    "run_storm",
    "run_tight",
    "summarize",
]

# Builds the operation one caller thread repeats (called once per thread, with its index).
OpFactory = Callable[[int], Callable[[], object]]

# Percentiles over more samples than this use an evenly strided subsample (max uses all).
_MAX_SORTED = 400_000


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Latency summary in milliseconds."""

    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def as_row(self) -> dict[str, Any]:
        return {
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
        }


@dataclasses.dataclass(frozen=True)
class CallerRun:
    """What a timed run of caller threads produced."""

    threads: int
    gets: int  # gets that started inside the measured window
    window_s: float  # from window start to the completion of the last counted get
    window_start: float  # time.monotonic() at the window start (the fake server's clock)
    window_end: float  # time.monotonic() when callers stopped starting gets
    latencies_ns: array[int]
    errors: int
    by_bucket: list[array[int]]  # with buckets > 1: the latencies split by the op's return value
    first_error: str | None = None  # repr of the first exception a get raised, if any

    @property
    def throughput(self) -> float:
        return self.gets / self.window_s if self.window_s > 0 else 0.0

    def stats(self) -> LatencyStats:
        return summarize(self.latencies_ns)


def _sorted_sample(values: Sequence[int]) -> list[int]:
    n = len(values)
    if n <= _MAX_SORTED:
        return sorted(values)
    step = n / _MAX_SORTED
    return sorted(values[int(i * step)] for i in range(_MAX_SORTED))


def _rank(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile (q in [0, 1]) of an already sorted list."""
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def summarize(latencies_ns: Sequence[int]) -> LatencyStats:
    if not latencies_ns:
        return LatencyStats(0, float("nan"), float("nan"), float("nan"), float("nan"))
    ordered = _sorted_sample(latencies_ns)
    return LatencyStats(
        n=len(latencies_ns),
        p50_ms=_rank(ordered, 0.50) / 1e6,
        p99_ms=_rank(ordered, 0.99) / 1e6,
        max_ms=max(latencies_ns) / 1e6,
        mean_ms=sum(latencies_ns) / len(latencies_ns) / 1e6,
    )


def cdf_points(latencies_ns: Sequence[int]) -> list[list[float]]:
    """``[[latency_ms, cumulative fraction], ...]`` at fixed quantiles, for the CDF plot."""
    if not latencies_ns:
        return []
    ordered = _sorted_sample(latencies_ns)
    quantiles = [i / 200 for i in range(1, 200)]
    quantiles += [0.996, 0.998, 0.999, 0.9995, 0.9999, 1.0]
    points = [[ordered[0] / 1e6, 0.0]]
    points += [[_rank(ordered, q) / 1e6, q] for q in quantiles]
    points[-1][0] = max(latencies_ns) / 1e6
    return points


def run_callers(
    threads: int,
    make_op: OpFactory,
    *,
    warmup_s: float,
    measure_s: float,
    think_s: float = 0.0,
    buckets: int = 1,
) -> CallerRun:
    """Run ``threads`` callers repeating their op for ``warmup_s + measure_s`` seconds.

    Each caller times every get; only gets that start inside the measured window (after the
    warm-up) are recorded. ``think_s`` is a ``time.sleep`` after every get (the "business call"),
    not part of the get's latency. With ``buckets > 1`` the op returns the index of the bucket its
    latency belongs to (for example 1 for the slow tenant, 0 for the others). Throughput is the
    recorded gets divided by the time from the window start to the completion of the last
    recorded get (a get stuck behind a lock when the window closes still counts, and so does the
    time it took).
    """
    barrier = threading.Barrier(threads + 1)
    lock = threading.Lock()
    results: list[_CallerResult] = []
    # Set by the main thread before it passes the barrier, so before any caller reads them.
    bounds = [0, 0]

    def caller(index: int) -> None:
        op = make_op(index)
        barrier.wait()
        result = _caller_loop(op, bounds[0], bounds[1], think_s=think_s, buckets=buckets)
        with lock:
            results.append(result)

    workers = [
        threading.Thread(target=caller, args=(i,), name=f"bench-caller-{i}", daemon=True)
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    now_ns = time.perf_counter_ns()
    mono = time.monotonic()
    bounds[0] = now_ns + int(warmup_s * 1e9)
    bounds[1] = bounds[0] + int(measure_s * 1e9)
    barrier.wait()
    for worker in workers:
        worker.join()
    by_bucket, merged = _merge([r.buffers for r in results], buckets)
    window_ns = max(bounds[1], *(r.last_done for r in results)) - bounds[0]
    errors = [r.first_error for r in results if r.first_error]
    return CallerRun(
        threads=threads,
        gets=len(merged),
        window_s=window_ns / 1e9,
        window_start=mono + warmup_s,
        window_end=mono + warmup_s + measure_s,
        latencies_ns=merged,
        errors=sum(r.errors for r in results),
        by_bucket=by_bucket,
        first_error=errors[0] if errors else None,
    )


@dataclasses.dataclass
class _CallerResult:
    buffers: list[array[int]]
    last_done: int
    errors: int
    first_error: str | None


def _caller_loop(
    op: Callable[[], object], window_start: int, end: int, *, think_s: float, buckets: int
) -> _CallerResult:
    """One caller: repeat ``op`` until ``end`` (perf_counter_ns), timing every call."""
    mine: list[array[int]] = [array("q") for _ in range(buckets)]
    record = mine[0].append
    clock = time.perf_counter_ns
    failed = 0
    first_error: str | None = None
    done = 0
    while True:
        t0 = clock()
        if t0 >= end:
            break
        bucket: object = 0
        try:
            bucket = op()
        except Exception as exc:
            failed += 1
            if first_error is None:
                first_error = repr(exc)[:300]
        t1 = clock()
        if t0 >= window_start:
            if buckets == 1:
                record(t1 - t0)
            else:
                mine[bucket if isinstance(bucket, int) else 0].append(t1 - t0)
            done = t1
        if think_s:
            time.sleep(think_s)
    return _CallerResult(mine, done, failed, first_error)


def _merge(buffers: list[list[array[int]]], buckets: int) -> tuple[list[array[int]], array[int]]:
    by_bucket: list[array[int]] = [array("q") for _ in range(buckets)]
    for mine in buffers:
        for i, buffer in enumerate(mine):
            by_bucket[i].extend(buffer)
    merged: array[int] = array("q")
    for buffer in by_bucket:
        merged.extend(buffer)
    return by_bucket, merged


def merge_runs(runs: list[CallerRun]) -> CallerRun:
    """Pool repeated runs of one cell: gets and windows add up, latencies are merged."""
    latencies: array[int] = array("q")
    for run in runs:
        latencies.extend(run.latencies_ns)
    buckets = len(runs[0].by_bucket)
    by_bucket: list[array[int]] = [array("q") for _ in range(buckets)]
    for run in runs:
        for i, bucket in enumerate(run.by_bucket):
            by_bucket[i].extend(bucket)
    return CallerRun(
        threads=runs[0].threads,
        gets=sum(run.gets for run in runs),
        window_s=sum(run.window_s for run in runs),
        window_start=runs[0].window_start,
        window_end=runs[-1].window_end,
        latencies_ns=latencies,
        errors=sum(run.errors for run in runs),
        by_bucket=by_bucket,
        first_error=next((run.first_error for run in runs if run.first_error), None),
    )


@dataclasses.dataclass(frozen=True)
class TightRun:
    """What a tight (untimed) loop of caller threads produced."""

    threads: int
    calls: int  # calls in the batches that started inside the measured window
    window_s: float  # from window start to the completion of the last counted batch

    @property
    def throughput(self) -> float:
        """Calls per second, all threads together."""
        return self.calls / self.window_s if self.window_s > 0 else 0.0

    @property
    def us_per_call(self) -> float:
        """Wall time per call, all threads together (µs): with the GIL, what one call costs."""
        return 1e6 / self.throughput if self.calls else float("nan")


def merge_tight(runs: list[TightRun]) -> TightRun:
    """Pool repeated tight runs of one cell: calls and windows add up."""
    return TightRun(
        threads=runs[0].threads,
        calls=sum(run.calls for run in runs),
        window_s=sum(run.window_s for run in runs),
    )


def run_tight(
    threads: int, make_op: OpFactory, *, warmup_s: float, measure_s: float, batch: int = 200
) -> TightRun:
    """Run ``threads`` callers repeating their op for ``warmup_s + measure_s`` seconds, in
    batches of ``batch`` calls with one clock read per batch (no per-call timing, no result
    kept). Only batches that start inside the measured window count; the window ends at the
    completion of the last of them (as in :func:`run_callers`)."""
    barrier = threading.Barrier(threads + 1)
    lock = threading.Lock()
    results: list[tuple[int, int]] = []
    bounds = [0, 0]  # set before the barrier is passed, so before any caller reads them

    def caller(index: int) -> None:
        op = make_op(index)
        barrier.wait()
        counted = _tight_loop(op, bounds[0], bounds[1], batch)
        with lock:
            results.append(counted)

    workers = [
        threading.Thread(target=caller, args=(i,), name=f"bench-tight-{i}", daemon=True)
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    bounds[0] = time.perf_counter_ns() + int(warmup_s * 1e9)
    bounds[1] = bounds[0] + int(measure_s * 1e9)
    barrier.wait()
    for worker in workers:
        worker.join()
    window_ns = max(bounds[1], *(done for _, done in results)) - bounds[0]
    return TightRun(threads, sum(calls for calls, _ in results), window_ns / 1e9)


def _tight_loop(
    op: Callable[[], object], window_start: int, end: int, batch: int
) -> tuple[int, int]:
    """One caller: ``batch`` calls of ``op`` at a time until ``end``; (calls counted, the
    perf_counter_ns at which the last counted batch completed)."""
    clock = time.perf_counter_ns
    reps = range(batch)
    calls = 0
    done = 0
    while True:
        t0 = clock()
        if t0 >= end:
            break
        for _ in reps:
            op()
        if t0 >= window_start:
            calls += batch
            done = clock()
    return calls, done


def run_storm(
    callers: int, op: Callable[[], object], *, release_at: float | None = None
) -> tuple[array[int], int]:
    """``callers`` threads call ``op`` once, all released together (at ``release_at``, a
    ``time.monotonic()`` value, if given). Returns the per-caller latencies and the errors."""
    barrier = threading.Barrier(callers + 1)
    lock = threading.Lock()
    latencies: array[int] = array("q")
    errors = [0]

    def caller() -> None:
        barrier.wait()
        t0 = time.perf_counter_ns()
        failed = 0
        try:
            op()
        except Exception:
            failed = 1
        elapsed = time.perf_counter_ns() - t0
        with lock:
            latencies.append(elapsed)
            errors[0] += failed

    workers = [
        threading.Thread(target=caller, name=f"bench-storm-{i}", daemon=True)
        for i in range(callers)
    ]
    for worker in workers:
        worker.start()
    if release_at is not None:
        delay = release_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    barrier.wait()
    for worker in workers:
        worker.join()
    return latencies, errors[0]

"""What the scenarios share: the :class:`Context` they run in and the helpers of several."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import actors
from actors.testing import FakeFeishu
from benchmarks.baselines import TokenSource
from benchmarks.harness import CallerRun, OpFactory, merge_runs, run_callers
from benchmarks.model import ScenarioResult, Sizes, Table
from benchmarks.systems import ActorsSource, build, upstream

__all__ = [
    "Context",
    "caller_row",
    "find_row",
    "fmt_ms",
    "fmt_x",
    "metrics_line",
    "random_tenants",
    "ratio",
    "upstream_between",
    "warm_hits",
]


class Context:
    """Results of the scenarios run so far (this run), and of earlier runs (from the JSON files)."""

    def __init__(self, earlier: dict[str, ScenarioResult]) -> None:
        self.current: dict[str, ScenarioResult] = {}
        self.earlier = earlier

    def lookup(self, name: str) -> tuple[ScenarioResult | None, bool]:
        """The latest result of scenario ``name`` and whether it comes from this run."""
        if name in self.current:
            return self.current[name], True
        return self.earlier.get(name), False


# --- helpers -------------------------------------------------------------------------------------


def _repeat(source: TokenSource) -> OpFactory:
    def make(_: int) -> Callable[[], object]:
        return source.get

    return make


def random_tenants(
    source: TokenSource, tenants: list[str], *, seed: int, slow: str | None = None
) -> OpFactory:
    """Each caller picks a uniformly random tenant per get (its own seeded generator); with
    ``slow`` set, the op returns bucket 1 for that tenant and 0 for the others."""

    def make(index: int) -> Callable[[], object]:
        rng = random.Random(seed * 1000 + index)
        choice = rng.choice
        get = source.get

        def op() -> object:
            tenant = choice(tenants)
            get(tenant)
            return 1 if tenant == slow else 0

        return op

    return make


def upstream_between(server: FakeFeishu, start: float, end: float) -> int:
    return sum(1 for r in server.requests if start <= r.at < end and r.kind in ("app", "tenant"))


def caller_row(name: str, run: CallerRun, **extra: Any) -> dict[str, Any]:
    stats = run.stats()
    return {
        "system": name,
        "threads": run.threads,
        "gets": run.gets,
        "throughput": run.throughput,
        **stats.as_row(),
        **extra,
        "errors": run.errors,
        **({"first_error": run.first_error} if run.first_error else {}),
    }


def find_row(table: Table, system: str, **match: Any) -> dict[str, Any] | None:
    for row in table.rows:
        if row.get("system") == system and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def fmt_x(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}×" if value >= 100 else f"{value:.2f}×"


def fmt_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.3g} ms"


def metrics_line(source: TokenSource) -> str | None:
    if not isinstance(source, ActorsSource):
        return None
    m = source.system.metrics()
    return (
        f"hits {m.hits:,}, misses {m.misses:,}, coalesced {m.coalesced:,}, stale served "
        f"{m.stale_served:,}, prewarms {m.prewarms:,}, upstream ok {m.fetch_success:,} / failed "
        f"{m.fetch_failure:,}"
    )


def warm_hits(
    systems: list[str],
    policy: actors.RefreshPolicy,
    thread_counts: tuple[int, ...],
    measure_s: float,
    sizes: Sizes,
) -> list[dict[str, Any]]:
    """The warm hit path of every system at every thread count, against one fake server.

    All systems are started and warmed first. Each cell is then measured in ``sizes.hit_reps``
    rounds of ``measure_s / hit_reps`` seconds, and every round runs all thread counts and all
    systems one after the other: the cells compared with each other are measured close in time
    and under the same drifts of this machine's speed. Rounds are pooled (gets and windows add
    up, latencies are merged).
    """
    runs: dict[tuple[str, int], list[CallerRun]] = {}
    upstream_requests: dict[tuple[str, int], int] = {}
    with upstream() as up:
        sources: list[tuple[str, TokenSource]] = []
        try:
            for name in systems:
                source = build(name, up, policy)
                sources.append((name, source))
                source.get()
            for _ in range(sizes.hit_reps):
                for threads in thread_counts:
                    for name, source in sources:
                        before = up.server.count()
                        run = run_callers(
                            threads,
                            _repeat(source),
                            warmup_s=sizes.hit_warmup_s,
                            measure_s=measure_s / sizes.hit_reps,
                        )
                        runs.setdefault((name, threads), []).append(run)
                        cell = (name, threads)
                        upstream_requests[cell] = (
                            upstream_requests.get(cell, 0) + up.server.count() - before
                        )
        finally:
            for _, source in sources:
                source.close()
    return [
        caller_row(
            name,
            merge_runs(runs[name, threads]),
            upstream=upstream_requests[name, threads],
        )
        for name in systems
        for threads in thread_counts
    ]

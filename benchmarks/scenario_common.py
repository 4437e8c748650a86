"""What several scenarios share: workloads (their size types and runners) and small helpers.

Nothing here reads results: a scenario compares only what it measured itself, in its own run.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import actors
from actors.testing import FakeFeishu
from benchmarks.baselines import TokenSource
from benchmarks.harness import CallerRun, OpFactory, merge_runs, run_callers
from benchmarks.model import Table
from benchmarks.systems import ActorsSource, build, upstream

__all__ = [
    "TENANTS_FULL",
    "TENANTS_QUICK",
    "HitLoop",
    "TenantRun",
    "TenantWorkload",
    "caller_row",
    "find_row",
    "fmt_ms",
    "fmt_x",
    "metrics_line",
    "random_tenants",
    "ratio",
    "run_tenants",
    "upstream_between",
    "warm_hits",
]


# --- the warm hit loop (scenarios 1 and 6) -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HitLoop:
    """Sizes of a warm hit-path measurement: each (system, threads) cell is measured in
    ``reps`` interleaved rounds of ``measure_s / reps`` seconds, each after ``warmup_s``."""

    threads: tuple[int, ...]
    warmup_s: float
    measure_s: float
    reps: int

    @property
    def threads_label(self) -> str:
        return "/".join(map(str, self.threads))


def _repeat(source: TokenSource) -> OpFactory:
    def make(_: int) -> Callable[[], object]:
        return source.get

    return make


def warm_hits(
    systems: list[str], policy: actors.RefreshPolicy, loop: HitLoop
) -> list[dict[str, Any]]:
    """The warm hit path of every system at every thread count, against one fake server.

    All systems are started and warmed first. Every round then runs all thread counts and all
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
            for _ in range(loop.reps):
                for threads in loop.threads:
                    for name, source in sources:
                        before = up.server.count()
                        run = run_callers(
                            threads,
                            _repeat(source),
                            warmup_s=loop.warmup_s,
                            measure_s=loop.measure_s / loop.reps,
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
        for threads in loop.threads
    ]


# --- the multi-tenant workload (scenarios 2 and 4) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class TenantWorkload:
    """One marketplace app with ``tenants`` tenants whose short-lived tokens expire during the
    run; ``callers`` threads each loop: get a uniformly random tenant's token, then sleep
    ``think_s`` (the business call). A scenario's sizes hold one: :data:`TENANTS_FULL`,
    :data:`TENANTS_QUICK`, or a variant made with :func:`dataclasses.replace`."""

    tenants: int
    callers: int
    think_s: float
    latency_s: float  # of every upstream request
    lifetime_s: float  # of every token
    window_s: float  # the fake server issues a new token in the last window_s of a lifetime
    margin_s: float  # every system serves a token only while now < expires_at - margin_s
    lead_s: float  # ours prewarms this long (±10 %) before expiry
    warmup_s: float  # before the measured window (cold caches fill)

    @property
    def tenant_keys(self) -> list[str]:
        return [f"tenant-{i:03d}" for i in range(self.tenants)]

    def policy(self) -> actors.RefreshPolicy:
        return actors.RefreshPolicy(
            safety_margin=self.margin_s,
            prewarm_lead=self.lead_s,
            jitter=0.1,
            retry_base=0.05,
            retry_cap=0.5,
            seed=1,
        )


# Issue 5's workload: scaled to Feishu's real 2 h tokens, 48 tenants refreshing every 4 s is
# about 86,400 tenants.
TENANTS_FULL = TenantWorkload(
    tenants=48,
    callers=16,
    think_s=0.001,
    latency_s=0.150,
    lifetime_s=4.0,
    window_s=1.0,
    margin_s=0.1,
    lead_s=0.6,
    warmup_s=1.5,
)
TENANTS_QUICK = dataclasses.replace(
    TENANTS_FULL, tenants=6, callers=4, latency_s=0.02, lifetime_s=1.0, lead_s=0.3, warmup_s=0.2
)


@dataclasses.dataclass(frozen=True)
class TenantRun:
    """One system on the tenant workload: its callers' run, the upstream requests that arrived
    in the measured window, and (ours only) its metrics over the whole run."""

    run: CallerRun
    upstream: int
    metrics: str | None


def run_tenants(
    name: str,
    workload: TenantWorkload,
    *,
    seed: int,
    measure_s: float,
    warmup_s: float | None = None,
    lifetime_s: float | None = None,
    slow: str | None = None,
    slow_latency_s: float | None = None,
) -> TenantRun:
    """Run system ``name`` on ``workload`` against a fresh fake server. ``lifetime_s`` overrides
    the token lifetime; with ``slow`` set, the latencies are split in two buckets (1: that
    tenant, 0: the others) and, with ``slow_latency_s`` too, its token requests take that long."""
    lifetime = workload.lifetime_s if lifetime_s is None else lifetime_s
    with upstream(
        marketplace=True,
        latency=workload.latency_s,
        token_lifetime=lifetime,
        refresh_window=min(workload.window_s, lifetime / 4),
    ) as up:
        if slow is not None and slow_latency_s is not None:
            up.server.set_latency(slow_latency_s, tenant_key=slow)
        source = build(name, up, workload.policy())
        try:
            run = run_callers(
                workload.callers,
                random_tenants(source, workload.tenant_keys, seed=seed, slow=slow),
                warmup_s=workload.warmup_s if warmup_s is None else warmup_s,
                measure_s=measure_s,
                think_s=workload.think_s,
                buckets=1 if slow is None else 2,
            )
            metrics = metrics_line(source)
        finally:
            source.close()
        return TenantRun(
            run, upstream_between(up.server, run.window_start, run.window_end), metrics
        )


# --- helpers -------------------------------------------------------------------------------------


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

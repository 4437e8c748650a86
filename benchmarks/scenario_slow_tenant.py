"""Scenario 4, a slow tenant: the multi-tenant workload with one tenant whose upstream is slow."""

from __future__ import annotations

import dataclasses

from benchmarks import render
from benchmarks.harness import summarize
from benchmarks.model import Goal, Scenario, ScenarioResult, Table
from benchmarks.scenario_common import (
    TENANTS_FULL,
    TENANTS_QUICK,
    TenantWorkload,
    find_row,
    fmt_ms,
    fmt_x,
    ratio,
    run_tenants,
)
from benchmarks.systems import ACTORS, DOUBLE_CHECKED, MUTEX

__all__ = ["SCENARIO", "SlowTenantSizes"]


@dataclasses.dataclass(frozen=True)
class SlowTenantSizes:
    workload: TenantWorkload
    slow_latency_s: float  # of the slow tenant's token requests
    measure_s: float


FULL = SlowTenantSizes(TENANTS_FULL, slow_latency_s=2.0, measure_s=4.0)
QUICK = SlowTenantSizes(TENANTS_QUICK, slow_latency_s=0.2, measure_s=0.4)

HEADERS = {
    "slow_p50_ms": "slow tenant p50 ms",
    "slow_p99_ms": "slow tenant p99 ms",
    "slow_max_ms": "slow tenant max ms",
}


def slow_tenant(sizes: SlowTenantSizes) -> ScenarioResult:
    work = sizes.workload
    tenants = work.tenant_keys
    slow = tenants[0]
    control = f"{ACTORS} (control: no slow tenant)"
    # (label, system, latency of the slow tenant's requests: None for the others' latency)
    plan: list[tuple[str, str, float | None]] = [
        (MUTEX, MUTEX, sizes.slow_latency_s),
        (DOUBLE_CHECKED, DOUBLE_CHECKED, sizes.slow_latency_s),
        (ACTORS, ACTORS, sizes.slow_latency_s),
        (control, ACTORS, None),
    ]
    warmup = max(work.warmup_s, sizes.slow_latency_s + 0.5)
    result = ScenarioResult(
        name="slow_tenant",
        title="4. Slow tenant",
        method=(
            f"The multi-tenant workload ({len(tenants)} tenants, {work.callers} callers, "
            f"{work.think_s * 1e3:g} ms business call, {work.lifetime_s:g} s tokens, "
            f"{work.latency_s * 1e3:g} ms upstream), except that tenant `{slow}`'s token "
            f"requests take {sizes.slow_latency_s:g} s. {warmup:g} s warm-up, "
            f"{sizes.measure_s:g} s measured. Latencies are split between the slow tenant "
            f"and the {len(tenants) - 1} others; throughput counts the others' gets. "
            f"`{control}` runs the same workload, in the same way, without the slow tenant: "
            "the reference the others' latencies are compared with."
        ),
        params={
            "tenants": len(tenants),
            "slow_tenant_latency_s": sizes.slow_latency_s,
            "warmup_s": warmup,
            "measure_s": sizes.measure_s,
        },
    )
    table = Table(
        "Slow tenant",
        [
            "system",
            "throughput",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "slow_p50_ms",
            "slow_p99_ms",
            "slow_max_ms",
            "upstream",
            "errors",
        ],
    )
    for label, name, slow_latency in plan:
        measured = run_tenants(
            name,
            work,
            seed=4,
            measure_s=sizes.measure_s,
            warmup_s=warmup,
            slow=slow,
            slow_latency_s=slow_latency,
        )
        run = measured.run
        others, slow_stats = summarize(run.by_bucket[0]), summarize(run.by_bucket[1])
        table.rows.append(
            {
                "system": label,
                "throughput": len(run.by_bucket[0]) / run.window_s,
                "p50_ms": others.p50_ms,
                "p99_ms": others.p99_ms,
                "max_ms": others.max_ms,
                "slow_p50_ms": slow_stats.p50_ms,
                "slow_p99_ms": slow_stats.p99_ms,
                "slow_max_ms": slow_stats.max_ms,
                "upstream": measured.upstream,
                "errors": run.errors,
                **({"first_error": run.first_error} if run.first_error else {}),
            }
        )
        if measured.metrics:
            result.notes.append(f"`{label}` metrics over the whole run: {measured.metrics}.")
    result.tables.append(table)
    result.notes.append(
        "The other tenants' throughput also counts the time callers spend on the slow tenant: "
        "each caller serves every tenant in turn, and while the slow tenant's token is being "
        f"refreshed (its {sizes.slow_latency_s:g} s fetch starts {work.lead_s:g} s before "
        "expiry) every caller that picks it waits for it. Per-get latencies are split by tenant "
        f"(in `{control}` too, where `{slow}` is an ordinary tenant)."
    )
    result.notes.append(
        f"The others' p99 is compared with `{control}`, measured in this run. It is no longer "
        "compared with scenario 1's single-key hit-path p99 (earlier runs read it from that "
        "scenario's results file): a one-key loop is not this workload."
    )

    ours, reference = find_row(table, ACTORS), find_row(table, control)
    if ours is not None and reference is not None:
        share = ratio(ours["p99_ms"], reference["p99_ms"])
        result.goals.append(
            Goal(
                "p99 of the other tenants vs the same workload without a slow tenant "
                f"(`{control}`, same run)",
                "<= 2×",
                "n/a"
                if share is None
                else f"{fmt_x(share)} ({fmt_ms(ours['p99_ms'])} vs {fmt_ms(reference['p99_ms'])})",
                None if share is None else share <= 2.0,
            )
        )
    return result


def section(result: ScenarioResult, *, console: bool = False) -> list[str]:
    return render.section(result, console=console, headers=HEADERS)


SCENARIO = Scenario("slow_tenant", slow_tenant, full=FULL, quick=QUICK, section=section)

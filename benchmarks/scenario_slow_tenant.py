"""Scenario 4, a slow tenant: scenario 2's workload with one tenant whose upstream is slow."""

from __future__ import annotations

from benchmarks.harness import run_callers, summarize
from benchmarks.model import Goal, ScenarioResult, Sizes, Table
from benchmarks.scenario_churn import churn_policy, tenant_names
from benchmarks.scenario_common import (
    Context,
    find_row,
    fmt_ms,
    fmt_x,
    metrics_line,
    random_tenants,
    ratio,
    upstream_between,
)
from benchmarks.systems import ACTORS, DOUBLE_CHECKED, MUTEX, build, upstream

__all__ = ["slow_tenant"]


def slow_tenant(sizes: Sizes, ctx: Context) -> ScenarioResult:
    systems = [MUTEX, DOUBLE_CHECKED, ACTORS]
    policy = churn_policy(sizes)
    tenants = tenant_names(sizes.churn_tenants)
    slow = tenants[0]
    warmup = max(sizes.churn_warmup_s, sizes.slow_latency_s + 0.5)
    result = ScenarioResult(
        name="slow_tenant",
        title="4. Slow tenant",
        method=(
            f"Scenario 2's workload ({len(tenants)} tenants, {sizes.churn_callers} callers, "
            f"{sizes.churn_think_s * 1e3:g} ms business call, {sizes.churn_lifetime_s:g} s tokens, "
            f"{sizes.churn_latency_s * 1e3:g} ms upstream), except that tenant `{slow}`'s token "
            f"requests take {sizes.slow_latency_s:g} s. {warmup:g} s warm-up, "
            f"{sizes.slow_measure_s:g} s measured. Latencies are split between the slow tenant "
            f"and the {len(tenants) - 1} others; throughput counts the others' gets."
        ),
        params={
            "tenants": len(tenants),
            "slow_tenant_latency_s": sizes.slow_latency_s,
            "warmup_s": warmup,
            "measure_s": sizes.slow_measure_s,
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
    for name in systems:
        with upstream(
            marketplace=True,
            latency=sizes.churn_latency_s,
            token_lifetime=sizes.churn_lifetime_s,
            refresh_window=sizes.churn_window_s,
        ) as up:
            up.server.set_latency(sizes.slow_latency_s, tenant_key=slow)
            source = build(name, up, policy)
            try:
                run = run_callers(
                    sizes.churn_callers,
                    random_tenants(source, tenants, seed=4, slow=slow),
                    warmup_s=warmup,
                    measure_s=sizes.slow_measure_s,
                    think_s=sizes.churn_think_s,
                    buckets=2,
                )
                line = metrics_line(source)
            finally:
                source.close()
            count = upstream_between(up.server, run.window_start, run.window_end)
        others, slow_stats = summarize(run.by_bucket[0]), summarize(run.by_bucket[1])
        table.rows.append(
            {
                "system": name,
                "throughput": len(run.by_bucket[0]) / run.window_s,
                "p50_ms": others.p50_ms,
                "p99_ms": others.p99_ms,
                "max_ms": others.max_ms,
                "slow_p50_ms": slow_stats.p50_ms,
                "slow_p99_ms": slow_stats.p99_ms,
                "slow_max_ms": slow_stats.max_ms,
                "upstream": count,
                "errors": run.errors,
                **({"first_error": run.first_error} if run.first_error else {}),
            }
        )
        if line:
            result.notes.append(f"`{name}` metrics over the whole run: {line}.")
    result.tables.append(table)
    result.notes.append(
        "The other tenants' throughput also counts the time callers spend on the slow tenant: "
        "each caller serves every tenant in turn, and while the slow tenant's token is being "
        f"refreshed (its {sizes.slow_latency_s:g} s fetch starts {sizes.churn_lead_s:g} s before "
        "expiry) every caller that picks it waits for it. Per-get latencies are split by tenant."
    )

    ours = find_row(table, ACTORS)
    if ours is None:
        return result
    hit, hit_now = ctx.lookup("hit_path")
    threads = sizes.churn_callers
    hit_row = None
    if hit is not None and hit.tables:
        hit_row = find_row(hit.tables[0], ACTORS, threads=threads)
    ref = float(hit_row["p99_ms"]) if hit_row else None
    share = ratio(ours["p99_ms"], ref)
    where = "" if hit_now else " (scenario 1 from an earlier run)"
    result.goals.append(
        Goal(
            f"p99 of the other tenants vs scenario 1's `actors` p99 at {threads} threads{where}",
            "<= 2×",
            f"n/a (no scenario 1 row at {threads} threads)"
            if share is None
            else f"{fmt_x(share)} ({fmt_ms(ours['p99_ms'])} vs {fmt_ms(ref)})",
            None if share is None else share <= 2.0,
        )
    )
    churned, churn_now = ctx.lookup("churn")
    churn_row = find_row(churned.tables[0], ACTORS) if churned and churned.tables else None
    ref2 = float(churn_row["p99_ms"]) if churn_row else None
    share2 = ratio(ours["p99_ms"], ref2)
    where2 = "" if churn_now else " (scenario 2 from an earlier run)"
    result.goals.append(
        Goal(
            "p99 of the other tenants vs the same workload without a slow tenant "
            f"(scenario 2's `actors` p99){where2}",
            "<= 2×",
            "n/a (scenario 2 not run)"
            if share2 is None
            else f"{fmt_x(share2)} ({fmt_ms(ours['p99_ms'])} vs {fmt_ms(ref2)})",
            None if share2 is None else share2 <= 2.0,
        )
    )
    return result

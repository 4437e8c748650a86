"""Does one tenant with a slow upstream slow the others down? The churn workload with one
tenant whose token requests take seconds."""

from __future__ import annotations

import dataclasses

from benchmarks import churn
from benchmarks.contenders import ACTORS, DOUBLE_CHECKED, MUTEX
from benchmarks.harness import Goal, Result, Scenario, Table, fmt, judged, ratio, summarize

CONTROL = f"{ACTORS} (control: no slow tenant)"


@dataclasses.dataclass(frozen=True)
class Sizes:
    work: churn.Workload
    slow_latency_s: float  # of the slow tenant's token requests


FULL = Sizes(
    dataclasses.replace(churn.FULL, tenants=48, lifetime_s=4.0, warmup_s=2.5, measure_s=4.0),
    slow_latency_s=2.0,
)
QUICK = Sizes(dataclasses.replace(churn.QUICK, warmup_s=0.3, measure_s=0.4), slow_latency_s=0.2)


def slow_tenant(sizes: Sizes) -> Result:
    work = sizes.work
    slow = work.keys[0]
    table = Table("Slow tenant")
    notes = []
    with work.server() as server:
        for label, name in [
            (MUTEX, MUTEX),
            (DOUBLE_CHECKED, DOUBLE_CHECKED),
            (ACTORS, ACTORS),
            (CONTROL, ACTORS),
        ]:
            latency = work.latency_s if label == CONTROL else sizes.slow_latency_s
            server.set_latency(latency, tenant_key=slow)
            run, upstream, metrics = churn.run_workload(name, work, server, seed=4, slow=slow)
            others, slowest = run.by_bucket
            slow_stats = {f"slow tenant {k}": v for k, v in summarize(slowest).items()}
            table.rows.append(
                {
                    "system": label,
                    "others' gets/s": len(others) / run.window_s,
                    **summarize(others),
                    **slow_stats,
                    "upstream": upstream,
                    "errors": run.errors,
                }
            )
            if metrics:
                notes.append(f"`{label}` metrics over the whole run: {metrics}.")
    result = Result(
        name="slow_tenant",
        title="Slow tenant",
        method=work.describe()
        + f" Tenant `{slow}`'s token requests take {sizes.slow_latency_s:g} s, except in "
        f"`{CONTROL}`, the same workload without a slow tenant (the reference). Latencies "
        f"are split between the slow tenant and the {work.tenants - 1} others.",
        tables=[table],
        notes=notes,
    )
    result.notes.append(
        "The others' throughput also pays for the slow tenant: every caller serves every "
        "tenant in turn, and while the slow tenant's token is being refreshed, a caller "
        "that picks it waits."
    )
    ours, reference = table.find(system=ACTORS), table.find(system=CONTROL)
    if ours and reference:
        share = ratio(ours["p99 ms"], reference["p99 ms"])
        result.goals.append(
            Goal(
                f"p99 of the other tenants vs `{CONTROL}`",
                "<= 2×",
                "n/a"
                if share is None
                else f"{share:.2f}× ({fmt(ours['p99 ms'])} vs {fmt(reference['p99 ms'])} ms)",
                judged(share is not None and share <= 2.0, smoke=work.smoke),
            )
        )
    return result


SCENARIO = Scenario("slow_tenant", slow_tenant, full=FULL, quick=QUICK)

"""Scenario 6, the official SDK (lark-oapi) as a peer: cold start on one key and warm hits."""

from __future__ import annotations

import actors
from benchmarks.baselines import lark_oapi_available
from benchmarks.harness import run_storm, summarize
from benchmarks.model import Goal, ScenarioResult, Sizes, Table
from benchmarks.scenario_common import Context, find_row, fmt_x, ratio, warm_hits
from benchmarks.systems import (
    ACTORS,
    DOUBLE_CHECKED,
    FUTURE_FLOOR,
    LARK_OAPI,
    MUTEX,
    ORACLE,
    build,
    upstream,
)

__all__ = ["sdk_peer"]


def sdk_peer(sizes: Sizes, ctx: Context) -> ScenarioResult:
    version = lark_oapi_available()
    cold_systems = [MUTEX, DOUBLE_CHECKED, ACTORS]
    warm_systems = [ORACLE, FUTURE_FLOOR, ACTORS]
    if version is not None:
        cold_systems.insert(0, LARK_OAPI)
        warm_systems.insert(2, LARK_OAPI)
    callers = sizes.sdk_callers
    policy = actors.RefreshPolicy()
    result = ScenarioResult(
        name="sdk_peer",
        title="6. The official SDK (lark-oapi) as a peer",
        method=(
            f"lark-oapi {version or '(not installed: skipped)'}: `TokenManager."
            "get_self_tenant_token(config)` with `config.domain` pointed at the fake server (the "
            "SDK's own way to target another domain), exactly what its clients call before each "
            f"API request. Cold: {callers} callers released together on one key that nobody has "
            f"fetched yet, upstream latency {sizes.sdk_latency_s * 1e3:g} ms, one get each. Warm: "
            f"the hit path at {'/'.join(map(str, sizes.hit_threads))} threads, "
            f"{sizes.sdk_measure_s:g} s per cell in {sizes.hit_reps} interleaved rounds, pooled "
            "(as in scenario 1)."
        ),
        params={
            "lark_oapi": version,
            "callers": callers,
            "upstream_latency_s": sizes.sdk_latency_s,
            "threads": list(sizes.hit_threads),
        },
    )
    cold = Table(
        "Cold start on one key",
        ["system", "callers", "upstream", "peak_concurrent", "p50_ms", "max_ms", "errors"],
    )
    for name in cold_systems:
        with upstream(latency=sizes.sdk_latency_s) as up:
            source = build(name, up, policy)
            try:
                latencies, errors = run_storm(callers, source.get)
            finally:
                source.close()
            stats = summarize(latencies)
            cold.rows.append(
                {
                    "system": name,
                    "callers": callers,
                    "upstream": up.server.count("tenant"),
                    "peak_concurrent": up.server.max_in_flight_per_key,
                    "p50_ms": stats.p50_ms,
                    "max_ms": stats.max_ms,
                    "errors": errors,
                }
            )
    result.tables.append(cold)

    warm = Table(
        "Warm hit path",
        ["system", "threads", "throughput", "p50_ms", "p99_ms", "max_ms", "vs_lark_oapi_x"],
    )
    warm.rows += warm_hits(warm_systems, policy, sizes.hit_threads, sizes.sdk_measure_s, sizes)
    for row in warm.rows:
        lark = find_row(warm, LARK_OAPI, threads=row["threads"])
        row["vs_lark_oapi_x"] = ratio(row["throughput"], lark["throughput"] if lark else None)
    result.tables.append(warm)

    ours, lark = find_row(cold, ACTORS), find_row(cold, LARK_OAPI)
    result.goals.append(
        Goal(
            f"upstream requests for {callers} cold callers (actors)",
            "1",
            str(ours["upstream"]) if ours else "n/a",
            None if ours is None else ours["upstream"] == 1,
        )
    )
    if lark is None:
        result.notes.append(
            "lark-oapi is not installed (`pip install lark-oapi`): its rows skipped."
        )
    else:
        result.notes.append(
            f"lark-oapi made {lark['upstream']} upstream requests for {callers} cold callers "
            f"(up to {lark['peak_concurrent']} at once): no single flight."
        )
        ours_vs, floor_vs = [], []
        for threads in sizes.hit_threads:
            theirs = find_row(warm, LARK_OAPI, threads=threads)
            mine, floor = (
                find_row(warm, ACTORS, threads=threads),
                find_row(warm, FUTURE_FLOOR, threads=threads),
            )
            base = theirs["throughput"] if theirs else None
            ours_vs.append(fmt_x(ratio(mine["throughput"] if mine else None, base)))
            floor_vs.append(fmt_x(ratio(floor["throughput"] if floor else None, base)))
        result.goals.append(
            Goal(
                "warm hit throughput vs lark-oapi's bare dict read",
                "as close as the futures API allows (the `dict + resolved future` floor)",
                f"actors {' / '.join(ours_vs)}; floor {' / '.join(floor_vs)} at "
                f"{'/'.join(map(str, sizes.hit_threads))} threads",
                None,
            )
        )
    return result

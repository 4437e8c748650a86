"""Scenario 6, the official SDK (lark-oapi) as a peer: cold start on one key and warm hits."""

from __future__ import annotations

import dataclasses

import actors
from benchmarks import render
from benchmarks.baselines import lark_oapi_available
from benchmarks.harness import run_storm, summarize
from benchmarks.model import Goal, Scenario, ScenarioResult, Table
from benchmarks.scenario_common import HitLoop, find_row, fmt_x, ratio, warm_hits
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

__all__ = ["SCENARIO", "SdkPeerSizes"]


@dataclasses.dataclass(frozen=True)
class SdkPeerSizes:
    callers: int  # released together on one cold key
    latency_s: float  # of every upstream request (cold start)
    loop: HitLoop  # the warm hit path


FULL = SdkPeerSizes(
    callers=64,
    latency_s=0.150,
    loop=HitLoop(threads=(1, 4, 16, 64), warmup_s=0.1, measure_s=0.6, reps=3),
)
QUICK = SdkPeerSizes(
    callers=16,
    latency_s=0.02,
    loop=HitLoop(threads=(1, 16), warmup_s=0.02, measure_s=0.08, reps=1),
)

HEADERS = {"vs_lark_oapi_x": "× lark-oapi"}


def sdk_peer(sizes: SdkPeerSizes) -> ScenarioResult:
    version = lark_oapi_available()
    cold_systems = [MUTEX, DOUBLE_CHECKED, ACTORS]
    warm_systems = [ORACLE, FUTURE_FLOOR, ACTORS]
    if version is not None:
        cold_systems.insert(0, LARK_OAPI)
        warm_systems.insert(2, LARK_OAPI)
    callers, loop = sizes.callers, sizes.loop
    policy = actors.RefreshPolicy()
    result = ScenarioResult(
        name="sdk_peer",
        title="6. The official SDK (lark-oapi) as a peer",
        method=(
            f"lark-oapi {version or '(not installed: skipped)'}: `TokenManager."
            "get_self_tenant_token(config)` with `config.domain` pointed at the fake server (the "
            "SDK's own way to target another domain), exactly what its clients call before each "
            f"API request. Cold: {callers} callers released together on one key that nobody has "
            f"fetched yet, upstream latency {sizes.latency_s * 1e3:g} ms, one get each. Warm: "
            f"the hit path at {loop.threads_label} threads, "
            f"{loop.measure_s:g} s per cell in {loop.reps} interleaved rounds, pooled "
            "(as in scenario 1)."
        ),
        params={
            "lark_oapi": version,
            "callers": callers,
            "upstream_latency_s": sizes.latency_s,
            "threads": list(loop.threads),
        },
    )
    cold = Table(
        "Cold start on one key",
        ["system", "callers", "upstream", "peak_concurrent", "p50_ms", "max_ms", "errors"],
    )
    for name in cold_systems:
        with upstream(latency=sizes.latency_s) as up:
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
    warm.rows += warm_hits(warm_systems, policy, loop)
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
        for threads in loop.threads:
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
                f"{loop.threads_label} threads",
                None,
            )
        )
    return result


def section(result: ScenarioResult, *, console: bool = False) -> list[str]:
    return render.section(result, console=console, headers=HEADERS)


SCENARIO = Scenario(
    "sdk_peer",
    sdk_peer,
    full=FULL,
    quick=QUICK,
    section=section,
    preload=lark_oapi_available,  # importing lark-oapi takes ~5 s
)

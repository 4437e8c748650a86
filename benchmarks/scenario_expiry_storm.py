"""Scenario 3, the expiry storm: many callers released together just after a token expired."""

from __future__ import annotations

import dataclasses
import time

import actors
from benchmarks import render
from benchmarks.harness import run_storm, summarize
from benchmarks.model import Goal, Scenario, ScenarioResult, Table
from benchmarks.scenario_common import find_row
from benchmarks.systems import ACTORS, DOUBLE_CHECKED, MUTEX, build, upstream

__all__ = ["SCENARIO", "StormSizes"]


@dataclasses.dataclass(frozen=True)
class StormSizes:
    callers: int
    latency_s: float  # of every upstream request
    lifetime_s: float  # of every token
    window_s: float  # the fake server issues a new token in the last window_s of a lifetime
    margin_s: float  # safety margin: a token is served only while now < expires_at - margin_s
    lead_s: float  # ours prewarms this long before expiry (no jitter)


FULL = StormSizes(
    callers=64, latency_s=0.150, lifetime_s=2.0, window_s=1.0, margin_s=0.3, lead_s=0.8
)
QUICK = StormSizes(
    callers=16, latency_s=0.02, lifetime_s=1.0, window_s=1.0, margin_s=0.5, lead_s=0.7
)


def expiry_storm(sizes: StormSizes) -> ScenarioResult:
    policy = actors.RefreshPolicy(
        safety_margin=sizes.margin_s, prewarm_lead=sizes.lead_s, jitter=0.0, seed=1
    )
    no_prewarm = dataclasses.replace(policy, idle_ttl=0.0)
    no_prewarm_label = "actors, prewarm defeated (idle_ttl=0)"
    cases: list[tuple[str, str, actors.RefreshPolicy]] = [
        (MUTEX, MUTEX, policy),
        (DOUBLE_CHECKED, DOUBLE_CHECKED, policy),
        (ACTORS, ACTORS, policy),
        (no_prewarm_label, ACTORS, no_prewarm),
    ]
    callers = sizes.callers
    result = ScenarioResult(
        name="expiry_storm",
        title="3. Expiry storm",
        method=(
            f"One key (self-built app), tokens live {sizes.lifetime_s:g} s, upstream "
            f"latency {sizes.latency_s * 1e3:g} ms, safety margin "
            f"{sizes.margin_s:g} s. "
            f"One get warms the key; {callers} callers are then released together 20 ms after "
            "the cached token stopped being servable (`expires_at - safety_margin`), each doing "
            "one get. Upstream counts every token request after the warm-up get, the storm "
            f"included. `actors` prewarms {sizes.lead_s:g} s before expiry, so its callers "
            f"find a fresh token; `{no_prewarm_label}` evicts the key at its prewarm time instead "
            "of refreshing it (nobody read it since the warm-up), so its storm meets a real miss "
            "and shows the single flight."
        ),
        params={
            "callers": callers,
            "token_lifetime_s": sizes.lifetime_s,
            "upstream_latency_s": sizes.latency_s,
            "safety_margin_s": sizes.margin_s,
            "prewarm_lead_s": sizes.lead_s,
        },
    )
    table = Table(
        "Expiry storm",
        ["system", "callers", "upstream", "peak_concurrent", "p50_ms", "max_ms", "errors"],
    )
    for label, name, pol in cases:
        with upstream(
            latency=sizes.latency_s,
            token_lifetime=sizes.lifetime_s,
            refresh_window=sizes.window_s,
        ) as up:
            source = build(name, up, pol)
            try:
                warmed = time.monotonic()
                source.get()
                up.server.reset_stats()
                release = warmed + sizes.lifetime_s - sizes.margin_s + 0.02
                latencies, errors = run_storm(callers, source.get, release_at=release)
                count = up.server.count("tenant") + up.server.count("app")
                peak = up.server.max_in_flight_per_key
            finally:
                source.close()
        stats = summarize(latencies)
        table.rows.append(
            {
                "system": label,
                "callers": callers,
                "upstream": count,
                "peak_concurrent": peak,
                "p50_ms": stats.p50_ms,
                "max_ms": stats.max_ms,
                "errors": errors,
            }
        )
    result.tables.append(table)
    for label in (ACTORS, no_prewarm_label):
        row = find_row(table, label)
        if row:
            result.goals.append(
                Goal(
                    f"upstream requests in the storm ({label})",
                    "1",
                    str(row["upstream"]),
                    row["upstream"] == 1,
                )
            )
    return result


def section(result: ScenarioResult, *, console: bool = False) -> list[str]:
    return render.section(result, console=console)


SCENARIO = Scenario("expiry_storm", expiry_storm, full=FULL, quick=QUICK, section=section)

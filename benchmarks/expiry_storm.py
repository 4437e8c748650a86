"""What happens when a token expires while many callers want it? Callers released together just
after the cached token stopped being servable."""

from __future__ import annotations

import dataclasses
import time

import actors
from actors.testing import FakeFeishuProcess
from benchmarks.contenders import ACTORS, DOUBLE_CHECKED, MUTEX, build, new_app
from benchmarks.harness import Goal, Result, Scenario, Table, judged, run_storm, storm_row

DEFEATED = "actors, prewarm defeated (idle_ttl=0)"


@dataclasses.dataclass(frozen=True)
class Sizes:
    callers: int
    latency_s: float  # of every upstream request
    lifetime_s: float  # of every token
    margin_s: float  # a token is served only while now < expires_at - margin_s
    lead_s: float  # ours prewarms this long before expiry (no jitter)
    smoke: bool = False


FULL = Sizes(callers=64, latency_s=0.150, lifetime_s=2.0, margin_s=0.3, lead_s=0.8)
QUICK = Sizes(callers=16, latency_s=0.02, lifetime_s=1.0, margin_s=0.5, lead_s=0.7, smoke=True)


def expiry_storm(sizes: Sizes) -> Result:
    policy = actors.RefreshPolicy(
        safety_margin=sizes.margin_s, prewarm_lead=sizes.lead_s, jitter=0.0, seed=1
    )
    cases = [
        (MUTEX, MUTEX, policy),
        (DOUBLE_CHECKED, DOUBLE_CHECKED, policy),
        (ACTORS, ACTORS, policy),
        (DEFEATED, ACTORS, dataclasses.replace(policy, idle_ttl=0.0)),
    ]
    table = Table("Expiry storm")
    with FakeFeishuProcess(
        latency=sizes.latency_s, token_lifetime=sizes.lifetime_s, refresh_window=sizes.lifetime_s
    ) as server:
        for label, name, case_policy in cases:
            app = new_app(server)
            contender = build(name, app, case_policy)
            try:
                warmed = time.monotonic()
                contender.get()
                server.reset_stats()
                release = warmed + sizes.lifetime_s - sizes.margin_s + 0.02
                latencies, errors = run_storm(sizes.callers, contender.get, release_at=release)
                stats = server.stats(app_id=app.config.app_id)
            finally:
                contender.close()
            table.rows.append(storm_row(label, latencies, errors, stats))
    result = Result(
        name="expiry_storm",
        title="Expiry storm",
        method=(
            f"One key (self-built app): tokens live {sizes.lifetime_s:g} s, upstream latency "
            f"{sizes.latency_s * 1e3:g} ms, safety margin {sizes.margin_s:g} s. One get warms "
            f"the key; {sizes.callers} callers are released together 20 ms after the cached "
            "token stopped being servable (`expires_at - safety_margin`), one get each. "
            "Upstream counts every token request after the warm-up get. `actors` prewarms "
            f"{sizes.lead_s:g} s before expiry, so its callers find a fresh token; "
            f"`{DEFEATED}` evicts the idle key at its prewarm time instead, so its storm meets "
            "a real miss and shows the single flight."
        ),
        tables=[table],
    )
    for label in (ACTORS, DEFEATED):
        row = table.find(system=label)
        if row:
            count = row["upstream"]
            ok = judged(count == 1, smoke=sizes.smoke)
            result.goals.append(
                Goal(f"upstream requests in the storm ({label})", "1", str(count), ok)
            )
    return result


SCENARIO = Scenario("expiry_storm", expiry_storm, full=FULL, quick=QUICK)

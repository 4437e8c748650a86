"""How does the library compare with the official SDK (lark-oapi)'s own token cache? Many
callers on one cold key, then the warm hit path."""

from __future__ import annotations

import dataclasses

import actors
from actors.testing import FakeFeishuProcess
from benchmarks import hit_path
from benchmarks.contenders import ACTORS, LARK_OAPI, build, lark_oapi_version, new_app
from benchmarks.harness import Goal, Result, Scenario, Table, judged, ratio, run_storm, storm_row
from benchmarks.hit_path import per_call


@dataclasses.dataclass(frozen=True)
class Sizes:
    callers: int  # released together on one cold key
    latency_s: float  # of every upstream request
    warm: hit_path.Sizes
    smoke: bool = False


FULL = Sizes(
    callers=64,
    latency_s=0.150,
    warm=dataclasses.replace(hit_path.FULL, threads=(1, 16)),
)
QUICK = Sizes(callers=8, latency_s=0.02, warm=hit_path.QUICK, smoke=True)


def sdk_peer(sizes: Sizes) -> Result:
    version = lark_oapi_version()
    names = [LARK_OAPI, ACTORS] if version else [ACTORS]
    policy = actors.RefreshPolicy()
    cold = Table("Cold start on one key")
    with FakeFeishuProcess(latency=sizes.latency_s) as server:
        contenders = {name: build(name, new_app(server), policy) for name in names}
        try:
            for name, contender in contenders.items():
                server.reset_stats()
                latencies, errors = run_storm(sizes.callers, contender.get)
                cold.rows.append(storm_row(name, latencies, errors, server.stats()))
            warm = Table(
                "Warm hit path, untimed loop",
                per_call({n: c.get for n, c in contenders.items()}, sizes.warm),
            )
        finally:
            for contender in contenders.values():
                contender.close()
    for row in warm.rows:
        lark = warm.find(system=LARK_OAPI, threads=row["threads"])
        row["× lark-oapi"] = ratio(row["gets/s"], lark["gets/s"] if lark else None)
    result = Result(
        name="sdk_peer",
        title="The official SDK (lark-oapi) as a peer",
        method=(
            f"lark-oapi {version or '(not installed: skipped)'}: `TokenManager."
            "get_self_tenant_token(config)` with `config.domain` pointed at the fake server, "
            "what its clients call before every API request. Cold: "
            f"{sizes.callers} callers released together on one key nobody has fetched yet, "
            f"upstream latency {sizes.latency_s * 1e3:g} ms. Warm: as in the hit path "
            f"(`{ACTORS}` through the same `get(tenant_key)` wrapper as lark-oapi), at "
            f"{'/'.join(map(str, sizes.warm.threads))} threads, best of {sizes.warm.rounds} "
            "rounds."
        ),
        tables=[cold, warm],
    )
    ours = cold.find(system=ACTORS)
    if ours:
        result.goals.append(
            Goal(
                f"upstream requests for {sizes.callers} cold callers ({ACTORS})",
                "1",
                str(ours["upstream"]),
                judged(ours["upstream"] == 1, smoke=sizes.smoke),
            )
        )
    if not version:
        result.notes.append("lark-oapi is not installed (`pip install lark-oapi`): no rows.")
    return result


SCENARIO = Scenario("sdk_peer", sdk_peer, full=FULL, quick=QUICK)

"""How does the library compare with the official SDK (lark-oapi)'s own token cache? Many
callers on one cold key, then the warm hit path."""

from __future__ import annotations

import dataclasses
import statistics

import actors
from actors.testing import FakeFeishuProcess
from benchmarks.contenders import ACTORS, LARK_OAPI, build, lark_oapi_version, new_app
from benchmarks.harness import (
    Goal,
    Result,
    Scenario,
    Table,
    judged,
    ratio,
    run_storm,
    run_tight,
    summarize,
)
from benchmarks.hit_path import DICT_READ, same


@dataclasses.dataclass(frozen=True)
class Sizes:
    callers: int  # released together on one cold key
    latency_s: float  # of every upstream request
    threads: tuple[int, ...]  # the warm hit path
    measure_s: float
    rounds: int
    smoke: bool = False


FULL = Sizes(callers=64, latency_s=0.150, threads=(1, 16), measure_s=0.5, rounds=5)
QUICK = Sizes(callers=8, latency_s=0.02, threads=(1,), measure_s=0.03, rounds=1, smoke=True)


def sdk_peer(sizes: Sizes) -> Result:
    version = lark_oapi_version()
    names = [LARK_OAPI, ACTORS] if version else [ACTORS]
    policy = actors.RefreshPolicy()
    cold, warm = Table("Cold start on one key"), Table("Warm hit path, untimed loop")
    tokens = {"tenant": "t-warm"}
    rates: dict[tuple[str, int], list[float]] = {}
    with FakeFeishuProcess(latency=sizes.latency_s) as server:
        contenders = {name: build(name, new_app(server), policy) for name in names}
        try:
            for name, contender in contenders.items():
                server.reset_stats()
                latencies, errors = run_storm(sizes.callers, contender.get)
                stats = server.stats()
                cold.rows.append(
                    {
                        "system": name,
                        "callers": sizes.callers,
                        "upstream": stats["requests"],
                        "peak concurrent upstream": stats["max_in_flight_per_key"],
                        **summarize(latencies),
                        "errors": errors,
                    }
                )
            ops = {DICT_READ: lambda: tokens.get("tenant")} | {
                n: c.get for n, c in contenders.items()
            }
            for _ in range(sizes.rounds):
                for threads in sizes.threads:
                    for name, op in ops.items():
                        rate = run_tight(
                            threads, same(op), warmup_s=0.05, measure_s=sizes.measure_s
                        )
                        rates.setdefault((name, threads), []).append(rate)
        finally:
            for contender in contenders.values():
                contender.close()
    for name in ops:
        for threads in sizes.threads:
            rate, base = (statistics.median(rates[n, threads]) for n in (name, DICT_READ))
            lark = statistics.median(rates[LARK_OAPI, threads]) if version else None
            row = {"system": name, "threads": threads, "µs per call": 1e6 / rate, "gets/s": rate}
            warm.rows.append(
                row | {"cost ÷ dict read ×": base / rate, "× lark-oapi": ratio(rate, lark)}
            )
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
            f"{'/'.join(map(str, sizes.threads))} threads, median of {sizes.rounds} rounds."
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

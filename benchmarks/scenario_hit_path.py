"""Scenario 1, the hit path: one warm key read in a tight loop by 1 to n caller threads.

Two measurements: every get timed on its own (latency percentiles, every system), and an untimed
tight loop (the per-call cost of ``system.proxy.get_token().get()`` against an unlocked dict read
and the resolved-future floor, in the same run), since the per-get timing alone costs about as
much as the calls measured there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import actors
from benchmarks import render
from benchmarks.baselines import ResolvedFutureFloor
from benchmarks.harness import OpFactory, TightRun, merge_tight, run_tight
from benchmarks.model import Goal, Scenario, ScenarioResult, Table
from benchmarks.scenario_common import HitLoop, find_row, fmt_x, ratio, warm_hits
from benchmarks.systems import (
    ACTORS,
    ACTORS_MAILBOX,
    DOUBLE_CHECKED,
    FUTURE_FLOOR,
    MUTEX,
    ORACLE,
    PYKKA_ASK,
    ActorsSource,
    upstream,
)

__all__ = ["SCENARIO", "HitPathSizes"]


@dataclasses.dataclass(frozen=True)
class HitPathSizes:
    loop: HitLoop  # every get timed
    tight: HitLoop  # untimed: the per-call cost
    smoke: bool = False  # a quick run: goals are not evaluated


FULL = HitPathSizes(
    HitLoop(threads=(1, 4, 16, 64), warmup_s=0.1, measure_s=0.9, reps=3),
    HitLoop(threads=(1, 16, 64), warmup_s=0.05, measure_s=0.9, reps=3),
)
QUICK = HitPathSizes(
    HitLoop(threads=(1, 16), warmup_s=0.02, measure_s=0.08, reps=1),
    HitLoop(threads=(1, 16), warmup_s=0.01, measure_s=0.05, reps=1),
    smoke=True,
)

DICT_READ = "dict read (unlocked)"
PER_CALL_GOAL_US = 1.0  # at 1 and 16 threads
PER_CALL_GOAL_X = 6.0  # the same goal, relative to a dict read on this machine
AGGREGATE_GOAL = 800_000  # gets/s at 16 and 64 threads

HEADERS = {
    "actors_vs_mutex_x": "actors ÷ mutex",
    "actors_vs_future_floor_x": "actors ÷ future floor",
    "mailbox_vs_mutex_x": "mailbox-only ÷ mutex",
    "mailbox_vs_pykka_ask_x": "mailbox-only ÷ pykka ask",
    "actors_vs_mailbox_x": "actors ÷ mailbox-only",
    "per_call_us": "µs per call (wall ÷ calls)",
    "cost_vs_dict_x": "cost ÷ dict read",
}


def hit_path(sizes: HitPathSizes) -> ScenarioResult:
    systems = [ORACLE, FUTURE_FLOOR, MUTEX, DOUBLE_CHECKED, ACTORS, ACTORS_MAILBOX, PYKKA_ASK]
    policy = actors.RefreshPolicy()
    loop = sizes.loop
    result = ScenarioResult(
        name="hit_path",
        title="1. Hit path",
        method=(
            "One warm key (a self-built app's tenant token, 2 h lifetime: nothing expires), "
            f"{loop.threads_label} caller threads calling `get` in a tight loop, "
            f"{loop.measure_s:g} s per cell in {loop.reps} interleaved rounds (each "
            f"after {loop.warmup_s:g} s of warm-up) whose results are pooled; every get is "
            "timed. `actors` is `system.proxy.get_token().get()` with fast reads (the default), "
            "`actors (mailbox only)` the same with `fast_reads=False`; `pykka ask (floor)` is a "
            "bare `ActorRef.ask` to an actor returning a constant; `dict + resolved future (floor)`"
            " a lock-free dict read of an already-resolved pykka future kept per cached token "
            "(made the way the project makes them) and its `get`, after a validity check on the "
            "clock (everything our fast path does except key resolution and its metrics); "
            "`oracle` returns a constant (the harness's own floor). "
            "Then, untimed: "
            f"{sizes.tight.threads_label} threads calling in batches of 200 with one clock read "
            f"per batch, {sizes.tight.measure_s:g} s per cell in {sizes.tight.reps} interleaved "
            f"rounds: `{ACTORS}` is `system.proxy.get_token().get()` (a self-built app's warm "
            f"key), `{DICT_READ}` is `tokens.get(key)` on a plain dict, in the same function "
            "shape, measured in the same run. Per-call cost is wall time ÷ calls of all threads "
            "together (the GIL runs one call at a time); gets/s is its inverse."
        ),
        params={
            "threads": list(loop.threads),
            "warmup_s": loop.warmup_s,
            "measure_s": loop.measure_s,
            "tight_threads": list(sizes.tight.threads),
            "tight_measure_s": sizes.tight.measure_s,
        },
    )
    table = Table(
        "Hit path: one warm key",
        ["system", "threads", "throughput", "p50_ms", "p99_ms", "max_ms", "vs_mutex_x", "upstream"],
    )
    table.rows += warm_hits(systems, policy, loop)
    for row in table.rows:
        mutex = find_row(table, MUTEX, threads=row["threads"])
        row["vs_mutex_x"] = ratio(row["throughput"], mutex["throughput"] if mutex else None)
    result.tables.append(table)

    ratios = Table(
        "Hit path ratios (throughput)",
        [
            "threads",
            "actors_vs_mutex_x",
            "actors_vs_future_floor_x",
            "mailbox_vs_mutex_x",
            "mailbox_vs_pykka_ask_x",
            "actors_vs_mailbox_x",
        ],
    )
    for threads in loop.threads:

        def thr(system: str, n: int = threads) -> float | None:
            row = find_row(table, system, threads=n)
            return float(row["throughput"]) if row else None

        ratios.rows.append(
            {
                "threads": threads,
                "actors_vs_mutex_x": ratio(thr(ACTORS), thr(MUTEX)),
                "actors_vs_future_floor_x": ratio(thr(ACTORS), thr(FUTURE_FLOOR)),
                "mailbox_vs_mutex_x": ratio(thr(ACTORS_MAILBOX), thr(MUTEX)),
                "mailbox_vs_pykka_ask_x": ratio(thr(ACTORS_MAILBOX), thr(PYKKA_ASK)),
                "actors_vs_mailbox_x": ratio(thr(ACTORS), thr(ACTORS_MAILBOX)),
            }
        )
    result.tables.append(ratios)
    per_call = Table(
        "Hit path per call: `system.proxy.get_token().get()` vs an unlocked dict read (untimed)",
        ["system", "threads", "per_call_us", "throughput", "cost_vs_dict_x"],
    )
    per_call.rows += tight_hits(sizes.tight)
    result.tables.append(per_call)

    def series(column: str) -> str:
        values = [fmt_x(row[column]) for row in ratios.rows]
        return " / ".join(values) + f" at {loop.threads_label} threads"

    result.goals += [
        Goal(
            "hit throughput, fast reads vs the mailbox path (`fast_reads=False`)",
            "a faster read path if the mailbox is the bottleneck (informational)",
            series("actors_vs_mailbox_x"),
            None,
        ),
        Goal(
            "hit throughput, fast reads vs the lock-and-dict read (mutex baseline)",
            "informational",
            series("actors_vs_mutex_x"),
            None,
        ),
        Goal(
            "hit throughput, fast reads vs a dict read returned as a resolved pykka future",
            "informational (the floor of any futures API)",
            series("actors_vs_future_floor_x"),
            None,
        ),
        *_per_call_goals(per_call, sizes),
    ]
    return result


def tight_hits(loop: HitLoop) -> list[dict[str, object]]:
    """The untimed per-call cost of the three reads, interleaved round by round."""
    with upstream() as up:
        ours = ActorsSource(up.app, policy=actors.RefreshPolicy())
        floor = ResolvedFutureFloor()
        try:
            proxy = ours.system.proxy
            warm = proxy.get_token().get(timeout=60.0)  # the key is cached from here on
            floor.get()
            fetched = up.server.count()
            tokens = {"tenant": warm}

            def dict_read(_: int) -> Callable[[], object]:
                def op() -> object:
                    return tokens.get("tenant")

                return op

            def ours_read(_: int) -> Callable[[], object]:
                def op() -> object:
                    return proxy.get_token().get()

                return op

            def floor_read(_: int) -> Callable[[], object]:
                return floor.get

            ops: dict[str, OpFactory] = {
                DICT_READ: dict_read,
                FUTURE_FLOOR: floor_read,
                ACTORS: ours_read,
            }
            runs: dict[tuple[str, int], list[TightRun]] = {}
            for _ in range(loop.reps):
                for threads in loop.threads:
                    for name, make in ops.items():
                        run = run_tight(
                            threads,
                            make,
                            warmup_s=loop.warmup_s,
                            measure_s=loop.measure_s / loop.reps,
                        )
                        runs.setdefault((name, threads), []).append(run)
            if up.server.count() != fetched:
                raise RuntimeError("the warm key was fetched again during the tight loop")
        finally:
            ours.close()
    rows: list[dict[str, object]] = []
    for name in ops:
        for threads in loop.threads:
            pooled = merge_tight(runs[name, threads])
            base = merge_tight(runs[DICT_READ, threads])
            rows.append(
                {
                    "system": name,
                    "threads": threads,
                    "per_call_us": pooled.us_per_call,
                    "throughput": pooled.throughput,
                    "cost_vs_dict_x": ratio(pooled.us_per_call, base.us_per_call),
                }
            )
    return rows


def _per_call_goals(table: Table, sizes: HitPathSizes) -> list[Goal]:
    threads = sizes.tight.threads
    label = "/".join(map(str, threads))

    def column(name: str) -> dict[int, float]:
        found = {n: find_row(table, ACTORS, threads=n) for n in threads}
        return {n: float(row[name]) for n, row in found.items() if row and row[name] is not None}

    cost, times, rate = column("per_call_us"), column("cost_vs_dict_x"), column("throughput")

    def judge(
        values: dict[int, float], at: tuple[int, ...], ok: Callable[[float], bool]
    ) -> bool | None:
        checked = [values[n] for n in at if n in values]
        if sizes.smoke or not checked or any(math.isnan(v) for v in checked):
            return None
        return all(ok(v) for v in checked)

    smoke = " (smoke run: not evaluated)" if sizes.smoke else ""
    few = tuple(n for n in threads if n in (1, 16))
    many = tuple(n for n in threads if n in (16, 64))
    return [
        Goal(
            "hit cost per call of `system.proxy.get_token().get()`, warm key (untimed loop)",
            f"<= {PER_CALL_GOAL_US:g} µs at 1 and 16 threads",
            " / ".join(f"{cost[n]:.3g} µs" for n in threads if n in cost)
            + f" at {label} threads{smoke}",
            judge(cost, few, lambda v: v <= PER_CALL_GOAL_US),
        ),
        Goal(
            "hit cost per call vs an unlocked dict read in the same run",
            f"<= ~{PER_CALL_GOAL_X:g}× at 1 and 16 threads",
            " / ".join(fmt_x(times[n]) for n in threads if n in times)
            + f" at {label} threads{smoke}",
            judge(times, few, lambda v: v <= PER_CALL_GOAL_X),
        ),
        Goal(
            "aggregate hit throughput of `system.proxy.get_token().get()` (untimed loop)",
            f">= {AGGREGATE_GOAL:,} gets/s at 16 and 64 threads",
            " / ".join(f"{rate[n]:,.0f}" for n in many if n in rate)
            + f" gets/s at {'/'.join(map(str, many))} threads{smoke}",
            judge(rate, many, lambda v: v >= AGGREGATE_GOAL),
        ),
    ]


def section(result: ScenarioResult, *, console: bool = False) -> list[str]:
    return render.section(result, console=console, headers=HEADERS)


SCENARIO = Scenario("hit_path", hit_path, full=FULL, quick=QUICK, section=section)

"""Scenario 1, the hit path: one warm key read in a tight loop by 1 to n caller threads."""

from __future__ import annotations

import dataclasses

import actors
from benchmarks import render
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
)

__all__ = ["SCENARIO", "HitPathSizes"]


@dataclasses.dataclass(frozen=True)
class HitPathSizes:
    loop: HitLoop


FULL = HitPathSizes(HitLoop(threads=(1, 4, 16, 64), warmup_s=0.1, measure_s=0.9, reps=3))
QUICK = HitPathSizes(HitLoop(threads=(1, 16), warmup_s=0.02, measure_s=0.08, reps=1))

HEADERS = {
    "actors_vs_mutex_x": "actors ÷ mutex",
    "actors_vs_future_floor_x": "actors ÷ future floor",
    "mailbox_vs_mutex_x": "mailbox-only ÷ mutex",
    "mailbox_vs_pykka_ask_x": "mailbox-only ÷ pykka ask",
    "actors_vs_mailbox_x": "actors ÷ mailbox-only",
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
            " a lock-free dict read returned as an already-resolved `pykka.ThreadingFuture`, made "
            "the way the project makes them (everything our fast path does except key "
            "resolution, clock reads, the snapshot lookup and its metrics); "
            "`oracle` returns a constant (the harness's own floor)."
        ),
        params={
            "threads": list(loop.threads),
            "warmup_s": loop.warmup_s,
            "measure_s": loop.measure_s,
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
    ]
    return result


def section(result: ScenarioResult, *, console: bool = False) -> list[str]:
    return render.section(result, console=console, headers=HEADERS)


SCENARIO = Scenario("hit_path", hit_path, full=FULL, quick=QUICK, section=section)

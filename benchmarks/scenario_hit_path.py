"""Scenario 1, the hit path: one warm key read in a tight loop by 1 to n caller threads."""

from __future__ import annotations

import actors
from benchmarks.model import Goal, ScenarioResult, Sizes, Table
from benchmarks.scenario_common import Context, find_row, fmt_x, ratio, warm_hits
from benchmarks.systems import (
    ACTORS,
    ACTORS_MAILBOX,
    DOUBLE_CHECKED,
    FUTURE_FLOOR,
    MUTEX,
    ORACLE,
    PYKKA_ASK,
)

__all__ = ["hit_path"]


def hit_path(sizes: Sizes, ctx: Context) -> ScenarioResult:
    systems = [ORACLE, FUTURE_FLOOR, MUTEX, DOUBLE_CHECKED, ACTORS, ACTORS_MAILBOX, PYKKA_ASK]
    policy = actors.RefreshPolicy()
    result = ScenarioResult(
        name="hit_path",
        title="1. Hit path",
        method=(
            "One warm key (a self-built app's tenant token, 2 h lifetime: nothing expires), "
            f"{'/'.join(map(str, sizes.hit_threads))} caller threads calling `get` in a tight "
            "loop, "
            f"{sizes.hit_measure_s:g} s per cell in {sizes.hit_reps} interleaved rounds (each "
            f"after {sizes.hit_warmup_s:g} s of warm-up) whose results are pooled; every get is "
            "timed. `actors` is `system.proxy.get_token().get()` with fast reads (the default), "
            "`actors (mailbox only)` the same with `fast_reads=False`; `pykka ask (floor)` is a "
            "bare `ActorRef.ask` to an actor returning a constant; `dict + resolved future (floor)`"
            " a lock-free dict read returned as an already-resolved `pykka.ThreadingFuture`, made "
            "the way the project makes them (everything our fast path does except key "
            "resolution, clock reads, the snapshot lookup and its metrics); "
            "`oracle` returns a constant (the harness's own floor)."
        ),
        params={
            "threads": list(sizes.hit_threads),
            "warmup_s": sizes.hit_warmup_s,
            "measure_s": sizes.hit_measure_s,
        },
    )
    table = Table(
        "Hit path: one warm key",
        ["system", "threads", "throughput", "p50_ms", "p99_ms", "max_ms", "vs_mutex_x", "upstream"],
    )
    table.rows += warm_hits(systems, policy, sizes.hit_threads, sizes.hit_measure_s, sizes)
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
    for threads in sizes.hit_threads:

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
        return " / ".join(values) + f" at {'/'.join(map(str, sizes.hit_threads))} threads"

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

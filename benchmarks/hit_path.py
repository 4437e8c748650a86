"""What does a hit cost? One warm key read in a tight loop by 1 to 64 threads, against a plain
dict read measured in the same run (the ratio is what stays comparable across machines); and a
warm user token against the tenant token of the same system, in the same run."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

import actors
from actors.testing import FakeFeishuProcess
from benchmarks.contenders import ACTORS, DOUBLE_CHECKED, MAILBOX, MUTEX, Actors, build, new_app
from benchmarks.harness import Goal, Result, Scenario, Table, fmt, judged, ratio, run_tight

USER_TOKEN = "actors (user token)"
DICT_READ = "dict read"
COST = "cost ÷ dict read ×"
USER_COST = f"cost ÷ {ACTORS} × (paired)"
GOAL_US = 1.0
GOAL_USER = 1.2  # a user token's hit costs what a tenant token's does
NOISE = 1.10  # run-to-run spread of the ratio on a busy machine
USER = actors.TokenKind.USER
OPEN_ID = "ou_bench_hit"
REDIRECT = "http://127.0.0.1:8000/callback"
LOGIN_TIMEOUT = 60.0
TOKEN_KINDS = ("app", "tenant", "user")


@dataclasses.dataclass(frozen=True)
class Sizes:
    threads: tuple[int, ...]
    warmup_s: float
    measure_s: float  # per cell and round
    # Interleaved: every cell once per round. Each cell reports its best round, as timeit does:
    # other work on the machine only ever slows a loop down.
    rounds: int
    smoke: bool = False  # goals are not judged


FULL = Sizes(threads=(1, 16, 64), warmup_s=0.05, measure_s=0.2, rounds=10)
QUICK = Sizes(threads=(1, 4), warmup_s=0.02, measure_s=0.1, rounds=1, smoke=True)


def hit_path(sizes: Sizes) -> Result:
    policy = actors.RefreshPolicy()
    with FakeFeishuProcess() as server:
        server.oauth.add_user(OPEN_ID)
        app = new_app(server)
        ours = Actors(app, policy)
        mailbox = Actors(new_app(server), policy, fast_reads=False)
        locked = {name: build(name, new_app(server), policy) for name in (MUTEX, DOUBLE_CHECKED)}
        try:
            code = server.oauth.issue_code(app.config.app_id, REDIRECT, user=OPEN_ID)
            ours.proxy.redeem_code(code, redirect_uri=REDIRECT).get(timeout=LOGIN_TIMEOUT)
            ops: dict[str, Callable[[], object]] = {
                # The call an application makes, exactly: no wrapper around it.
                ACTORS: lambda: ours.proxy.get_token().get(),
                USER_TOKEN: lambda: ours.proxy.get_token(USER, user=OPEN_ID).get(),
                MAILBOX: lambda: mailbox.proxy.get_token().get(),
                **{name: contender.get for name, contender in locked.items()},
            }
            for op in ops.values():
                op()  # every key is cached from here on
            fetched = server.count(kinds=TOKEN_KINDS)
            table = Table("Per-call cost of a hit, untimed loop", per_call(ops, sizes))
            if server.count(kinds=TOKEN_KINDS) != fetched:
                raise RuntimeError("a warm key was fetched again during the loop")
        finally:
            for contender in (ours, mailbox, *locked.values()):
                contender.close()
    costs = {t: table.find(system=ACTORS, threads=t) for t in sizes.threads}
    label = "/".join(map(str, sizes.threads))
    result = Result(
        name="hit_path",
        title="Hit path",
        method=(
            f"One warm key (a self-built app's tenant token, 2 h lifetime). {label} threads "
            "call in batches of 200 with one clock read per batch (no per-call timing), "
            f"{sizes.measure_s:g} s per cell after {sizes.warmup_s:g} s of warm-up, in "
            f"{sizes.rounds} interleaved rounds; each cell reports its best round (as `timeit` "
            "does: other work on the machine only slows a loop down). "
            f"`{ACTORS}` is `system.proxy.get_token().get()`, the call an application makes; "
            f"`{MAILBOX}` the same with `fast_reads=False`; `{USER_TOKEN}` is "
            "`system.proxy.get_token(TokenKind.USER, user=open_id).get()` on the same system as "
            f"`{ACTORS}`, for a user logged in through the fake's code and `redeem_code` (no "
            f"store); its `{USER_COST}` is the median over the rounds of its cost ÷ that of "
            f"`{ACTORS}`, the cell run just before it; `{DICT_READ}` is `tokens.get(key)` on a "
            "plain dict, in the same function shape. Cost per call is wall time ÷ calls of all "
            "threads together (the GIL runs one call at a time)."
        ),
        tables=[table],
    )
    result.goals.append(
        Goal(
            f"hit cost per call of `{ACTORS}`",
            f"<= {GOAL_US:g} µs",
            " / ".join(f"{row['µs per call']:.3g} µs" for row in costs.values() if row)
            + f" at {label} threads",
            judged(
                all(r and r["µs per call"] <= GOAL_US for r in costs.values()), smoke=sizes.smoke
            ),
        )
    )

    paired = [table.find(system=USER_TOKEN, threads=t) for t in sizes.threads]
    ratios = [None if row is None else row.get(USER_COST) for row in paired]
    result.goals.append(
        Goal(
            f"hit cost of a user token (`{USER_TOKEN}`) ÷ a tenant token's (`{ACTORS}`), same "
            "run (median of the rounds' paired ratios)",
            f"<= {GOAL_USER:g}×",
            " / ".join(fmt(r, "×") for r in ratios) + f" at {label} threads",
            judged(all(r is not None and r <= GOAL_USER for r in ratios), smoke=sizes.smoke),
        )
    )
    return result


def compare(result: Result, previous: Result) -> None:
    """The hit path is no slower than before: the cost ÷ dict read ratio of this run against
    the one in the results file it replaces, thread count by thread count."""
    before = previous.tables[0] if previous.tables else Table("")
    pairs = []
    for row in result.tables[0].rows:
        old = (
            before.find(system=ACTORS, threads=row["threads"]) if row["system"] == ACTORS else None
        )
        if old is not None and old.get(COST) is not None and row[COST] is not None:
            pairs.append((row["threads"], row[COST], old[COST]))
    if not pairs:
        return
    result.goals.append(
        Goal(
            "hit cost ÷ dict read, against the results file this run replaces "
            f"(commit {previous.extra.get('commit')})",
            f"no higher than before (within {NOISE - 1:.0%} noise)",
            " / ".join(f"{new:.2f}× (was {old:.2f}×)" for _, new, old in pairs)
            + f" at {'/'.join(str(t) for t, _, _ in pairs)} threads",
            all(new <= old * NOISE for _, new, old in pairs),
        )
    )


def per_call(ops: dict[str, Callable[[], object]], sizes: Sizes) -> list[dict[str, Any]]:
    """The per-call cost of every op and of a dict read at every thread count, the cells
    interleaved round by round; each cell's best round, and its cost ÷ the dict read's."""
    tokens = {"tenant": "t-warm"}
    ops = {DICT_READ: lambda: tokens.get("tenant"), **ops}
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(sizes.rounds):
        for threads in sizes.threads:
            for name, op in ops.items():
                rate = run_tight(
                    threads, _every(op), warmup_s=sizes.warmup_s, measure_s=sizes.measure_s
                )
                rates.setdefault((name, threads), []).append(rate)
    rows = []
    for (name, threads), each in rates.items():
        rate, base = max(each), max(rates[DICT_READ, threads])
        cost = {
            "µs per call": 1e6 / rate if rate else None,
            "gets/s": rate,
            COST: ratio(base, rate),
        }
        if name == USER_TOKEN and (ACTORS, threads) in rates:
            # Round by round, the two cells ran one after the other: the median of those
            # ratios stays put where a busy machine makes either cell's best round a lottery.
            paired = [ratio(t, u) for t, u in zip(rates[ACTORS, threads], each, strict=True)]
            known = [r for r in paired if r is not None]
            cost[USER_COST] = statistics.median(known) if known else None
        rows.append({"system": name, "threads": threads, **cost})
    return sorted(rows, key=lambda row: list(ops).index(row["system"]))


def _every(op: Callable[[], object]) -> Callable[[int], Callable[[], object]]:
    return lambda _: op


SCENARIO = Scenario("hit_path", hit_path, full=FULL, quick=QUICK, compare=compare)

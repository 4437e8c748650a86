"""The embedded store across real processes on one host sharing one file: one upstream request
per refresh, tickets and invalidations that reach every process, a holder killed (SIGKILL) or
paused (SIGSTOP) mid-fetch, and a forked child on a store of its own."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest

import actors
from actors.stores import SqliteStore
from actors.stores._sqlite import DEFAULT_LEASE
from actors.testing import FakeFeishu, FunctionSource, wait_listening
from tests.conftest import APP_ID, MARKET_ID, MARKET_SECRET, SECRET
from tests.redis_server import _Child, serve_commands, stopped
from tests.stores.conftest import SPAWN, Fleet, counting_source, wait_for
from tests.test_fork import held_by_another_thread, in_child, numbered_source

APP = actors.AppConfig(APP_ID, SECRET, base_url="http://127.0.0.1:9")
MARKET = actors.AppConfig("cli_fk", "secret", app_type=actors.AppType.MARKETPLACE)


# --- child processes (spawned: module-level, importable without pytest's fixtures) ---------------


class SqliteChild(_Child):
    """A remote-controlled child whose TokenSystem uses a SqliteStore on the test's file."""

    def start(self, config: dict[str, Any]) -> str:
        store = SqliteStore(config["path"], **config["store"])
        self.store = cast(Any, store)
        self.app = actors.AppConfig(
            config["app_id"],
            config["secret"],
            app_type=actors.AppType(config["app_type"]),
            base_url=config["base_url"],
        )
        policy = actors.RefreshPolicy(**config["policy"])
        self.system = actors.TokenSystem.start(self.app, store=store, policy=policy)
        return "ok" if wait_listening(store, timeout=5) else "not listening"


def sqlite_fleet_child(conn: Connection) -> None:
    """A fleet process: :func:`tests.redis_server.serve_commands` for a :class:`SqliteChild`."""
    serve_commands(conn, SqliteChild(conn))


def blocking_holder(path: str, app: actors.AppConfig, lease: float) -> None:
    """A process whose upstream never answers: it takes a key's lease and hangs until killed."""
    hang = threading.Event()

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        hang.wait()
        return actors.Grant("t-never", 7200.0)

    store = SqliteStore(path, lease=lease)
    system = actors.TokenSystem.start(app, store=store, source=FunctionSource(fetch))
    system.proxy.get_token()
    hang.wait()


def paused_holder(path: str, app: actors.AppConfig, grant: actors.Grant) -> None:
    """A lease holder that stops itself (SIGSTOP) once upstream has answered ``grant`` and
    before it writes it to the file; after SIGCONT it finishes its get and exits."""

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        os.kill(os.getpid(), signal.SIGSTOP)
        return grant

    with actors.TokenSystem.start(
        app, store=SqliteStore(path), source=FunctionSource(fetch)
    ) as system:
        system.proxy.get_token().get(timeout=120)


# --- the test's side -----------------------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "tokens.db")


def spawn(fleet: Callable[[int], Fleet], size: int) -> Fleet:
    """``size`` children running :func:`sqlite_fleet_child`, closed after the test."""
    made = fleet(0)
    for _ in range(size):
        parent, child = SPAWN.Pipe()
        process = SPAWN.Process(target=sqlite_fleet_child, args=(child,), daemon=True)
        process.start()
        child.close()
        made.conns.append(parent)
        made.processes.append(process)
    return made


def config(
    server: FakeFeishu, path: str, *, marketplace: bool = False, **policy: Any
) -> dict[str, Any]:
    return {
        "path": path,
        "store": {},
        "app_id": MARKET_ID if marketplace else APP_ID,
        "secret": MARKET_SECRET if marketplace else SECRET,
        "app_type": "marketplace" if marketplace else "self_built",
        "base_url": server.base_url,
        "policy": policy,
    }


def lease_left(path: str) -> float | None:
    """Seconds left of the lease in the file (None while there is none, or no table yet)."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        found = conn.execute("SELECT until_ms FROM leases").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return None if found is None else (found[0] - time.time_ns() // 1_000_000) / 1000


def stored_token(path: str) -> tuple[str, float]:
    """The token row's token and its seconds left."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        token, expires_ms = conn.execute("SELECT token, expires_ms FROM tokens").fetchone()
    finally:
        conn.close()
    return token, (expires_ms - time.time_ns() // 1_000_000) / 1000


# --- one upstream request ------------------------------------------------------------------------


@pytest.mark.parametrize(("processes", "threads"), [(4, 8), (8, 16)])
def test_processes_make_one_upstream_request_per_refresh_across_expiries(
    processes: int, threads: int, path: str, fleet: Callable[[int], Fleet]
) -> None:
    # Tokens live 4 s and are renewed in their last 3 s: 6.5 s of traffic spans two refreshes.
    with FakeFeishu(token_lifetime=4.0, refresh_window=3.0) as server:
        server.add_app(APP_ID, SECRET)
        children = spawn(fleet, processes)
        options: dict[str, Any] = {
            "safety_margin": 0.5,
            "prewarm_lead": 1.2,
            "request_timeout": (1.0, 2.0),
        }
        assert children.call_all("start", config(server, path, **options)) == ["ok"] * processes

        results = children.call_all("hammer", threads, 6.5, 0.005, timeout=60)

        # A refresh still in flight as the traffic stops is counted with the token it brings.
        settled = children.call_all("settled_token")
        tokens = set(settled).union(*(r["tokens"] for r in results))
        assert [r["errors"] for r in results] == [[]] * processes
        assert all(r["gets"] > 100 for r in results)
        assert len(tokens) >= 2  # the first token and at least one refresh (usually two)
        assert all(server.expires_at(token) is not None for token in tokens)
        # One upstream request per token, for processes x threads callers.
        assert server.count("tenant") == len(tokens)
        children.call_all("stop")


# --- tickets and invalidations -------------------------------------------------------------------


def test_an_app_ticket_set_in_one_process_serves_the_others(
    path: str, fleet: Callable[[int], Fleet]
) -> None:
    with FakeFeishu() as server:
        server.add_app(MARKET_ID, MARKET_SECRET, marketplace=True)
        children = spawn(fleet, 3)
        started = children.call_all(
            "start", config(server, path, marketplace=True, ticket_wait=10.0)
        )
        assert started == ["ok"] * 3

        # Process 1 needs the app token before any ticket exists: it asks Feishu to resend it
        # and waits for one in the file; process 0 then receives the pushed ticket.
        children.send(1, "get", "app", 15.0)
        wait_for(lambda: server.count("resend") == 1, 10, "the resend request")
        children.call(0, "set_ticket", MARKET_ID, server.issue_ticket(MARKET_ID))
        token = children.recv(1, timeout=15)
        # A process that starts with no ticket takes the one in the file: no resend, no request.
        assert children.call(2, "get", "app") == token

        assert server.count("resend") == 1
        assert server.count("app") == 1
        children.call_all("stop")


def test_an_invalidation_reaches_every_process_within_a_second(
    path: str, fleet: Callable[[int], Fleet]
) -> None:
    with FakeFeishu() as server:
        server.add_app(APP_ID, SECRET)
        children = spawn(fleet, 4)
        assert children.call_all("start", config(server, path)) == ["ok"] * 4
        (old,) = set(children.call_all("get"))
        server.rotate(APP_ID)  # the token is revoked upstream: the next request mints a new one

        for index in range(1, 4):
            children.send(index, "watch", old, 5.0)
        assert [children.recv(i) for i in range(1, 4)] == ["watching"] * 3
        sent = time.time()
        assert children.call(0, "invalidate", old) is True
        seen = [children.recv(i) for i in range(1, 4)]

        assert all(at is not None and at - sent < 1.0 for at in seen), (sent, seen)
        assert len(set(children.call_all("get")) | {old}) == 2
        assert server.count("tenant") == 2
        children.call_all("stop")


# --- holders killed or paused --------------------------------------------------------------------


class Stall(NamedTuple):
    token: str  # what the cold process got
    took: float  # how long its get took
    left: float  # what was left of the dead holder's lease when it started
    requests: int  # upstream requests it made


def cold_get_after_killed_holder(path: str, lease: float) -> Stall:
    """A holder (a process with the store's ``lease``) takes the lease and is killed mid-fetch
    with SIGKILL; then a cold process gets the token, within 5 s."""
    holder = SPAWN.Process(target=blocking_holder, args=(path, APP, lease), daemon=True)
    holder.start()
    source = counting_source()
    try:
        wait_for(lambda: lease_left(path) is not None, 30, "the holder's lease")
        holder.kill()
        holder.join(5)
        left = cast(float, lease_left(path))
        started = time.monotonic()
        with actors.TokenSystem.start(APP, store=SqliteStore(path), source=source) as system:
            token: str = system.proxy.get_token().get(timeout=5)
            took = time.monotonic() - started
    finally:
        holder.kill()
    return Stall(token, took, left, len(source.requests))


def test_a_lease_holder_killed_mid_fetch_is_taken_over_after_its_lease_expires(path: str) -> None:
    stall = cold_get_after_killed_holder(path, 3.0)

    assert stall.token == "t-000001-shared-token" and stall.requests == 1
    # It waited for the dead holder's lease to expire.
    assert stall.left - 0.02 <= stall.took < stall.left + 2.0
    assert stored_token(path)[0] == stall.token
    assert lease_left(path) is None  # released by the process that took over


def test_a_lease_holder_killed_mid_fetch_holds_up_a_cold_process_about_one_lease(
    path: str,
) -> None:
    stall = cold_get_after_killed_holder(path, DEFAULT_LEASE)

    assert stall.token == "t-000001-shared-token" and stall.requests == 1
    assert stall.took < DEFAULT_LEASE + 1.0  # the dead holder renewed its lease no more


LIFETIME = 600.0  # well beyond the default safety margin
PAUSE = 2.5  # longer than the lease: another process takes over meanwhile


@pytest.mark.xfail(
    strict=False,
    reason="open defect, not reproduced since: under CI load a late write once left 599.8 s "
    "where 597.4 s was the bound (then measured on the monotonic clock; the file's expiry is "
    "on the wall clock, which the bound now uses too)",
)
def test_a_holder_paused_past_its_lease_never_keeps_the_token_beyond_its_real_expiry(
    path: str,
) -> None:
    token = "t-paused-writer-0001"
    holder = SPAWN.Process(
        target=paused_holder, args=(path, APP, actors.Grant(token, LIFETIME)), daemon=True
    )
    holder.start()
    try:
        # The holder asked Feishu, got the token with LIFETIME left, and stopped (SIGSTOP)
        # before writing it: Feishu's clock for that token started before this moment.
        wait_for(lambda: stopped(cast(int, holder.pid)), 30, "the holder to stop")
        stopped_at = time.monotonic()
        # The file keeps expiry times on the wall clock (processes compare them): the bound is
        # measured on it too, so that a step of the host's clock moves both alike.
        stopped_wall = time.time()

        def feishu(_request: actors.TokenRequest) -> actors.Grant:
            # Feishu hands out the same token again, with what is really left of it.
            return actors.Grant(token, LIFETIME - (time.monotonic() - stopped_at))

        source = FunctionSource(feishu)
        with actors.TokenSystem.start(APP, store=SqliteStore(path), source=source) as system:
            assert system.proxy.get_token().get(timeout=5) == token
            took_over = time.monotonic() - stopped_at
            time.sleep(max(0.0, PAUSE - took_over))  # the pause itself, not a wait for an event
            os.kill(cast(int, holder.pid), signal.SIGCONT)
            holder.join(30)
        assert holder.exitcode == 0  # it wrote its late answer and finished
        checked = time.time()
        left = stored_token(path)[1]
    finally:
        if holder.pid is not None and holder.is_alive():
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()

    assert took_over < DEFAULT_LEASE + 1.0  # the paused holder stopped renewing its lease
    # At most what Feishu still accepts (counted from the pause, which began after the
    # holder's request left): the late writer did not extend it by its pause.
    assert left <= LIFETIME - (checked - stopped_wall) + 0.1, (left, checked - stopped_wall)


# --- a forked child ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_from_a_sqlite_backed_system_shares_through_a_store_of_its_own(
    path: str,
) -> None:
    store = SqliteStore(path)
    system = actors.TokenSystem.start(MARKET, source=numbered_source(), store=store)
    try:

        def child() -> str:
            system.proxy.set_app_ticket("ticket-from-child").get(timeout=5)
            token = system.proxy.get_token(tenant_key="t").get(timeout=5)
            system.stop(timeout=5)
            return token

        # Forked while a parent thread holds the store's connection pool: the child's copy of
        # that lock stays held forever, so any use of the parent's connections there would hang.
        lock = cast(Any, store)._db._lock
        code, text = in_child(child, timeout=15, around_fork=held_by_another_thread(lock))

        assert code == 0, text
        child_pid = text.split("-")[1]
        assert text.startswith("t-") and child_pid != str(os.getpid())
        # Written through the child's own store, and served from the file here.
        assert store.get_ticket(MARKET) == "ticket-from-child"
        assert system.proxy.get_token(tenant_key="t").get(timeout=5) == text
    finally:
        system.stop()


def open_files_under(folder: str) -> list[str]:
    """The files under ``folder`` this process has open (from /proc)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(folder):
            found.append(os.path.basename(target))
    return sorted(found)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_forked_child_inherits_no_connection_to_the_file(path: str) -> None:
    # SQLite keeps, per process, a record of the locks its connections hold on the file; a
    # child that inherited an open connection would believe it holds them (and the real ones
    # stay the parent's): the parent closes its connections for the fork.
    store = SqliteStore(path)
    system = actors.TokenSystem.start(MARKET, source=numbered_source(), store=store)
    try:
        system.proxy.set_app_ticket("ticket-1").get(timeout=5)
        system.proxy.get_token(tenant_key="t").get(timeout=5)
        folder = os.path.dirname(path)
        assert "tokens.db" in open_files_under(folder)  # the pool's connections, and the WAL

        code, text = in_child(lambda: open_files_under(folder), timeout=15)

        assert code == 0, text
        assert text == "[]"
        # The parent goes on, opening connections anew.
        assert store.get_ticket(MARKET) == "ticket-1"
    finally:
        system.stop()

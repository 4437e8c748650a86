"""A system used in a child forked after start() never hangs and never fails for it: on first
use the child starts a system of its own (actors, threads, session, store connections), says so
once at WARNING, and serves from then on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, cast

import pykka
import pytest
import requests
from loguru import logger

import actors
from actors.stores import Store
from actors.testing import FakeFeishu, FunctionSource
from tests.conftest import APP_ID, SECRET, our_threads
from tests.redis_server import RedisServer
from tests.stores.conftest import redis_server  # noqa: F401 - the store tests' real redis-server

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

MARKET = actors.AppConfig("cli_fk", "secret", app_type=actors.AppType.MARKETPLACE)
CHILD_TIMEOUT = 30.0  # real seconds a child may take before it counts as hung


def in_child(
    body: Callable[[], object],
    *,
    timeout: float = CHILD_TIMEOUT,
    around_fork: contextlib.AbstractContextManager[object] | None = None,
) -> tuple[int, str]:
    """Run ``body()`` in a forked child; what it returns comes back as text through a pipe.

    Bounded: a child that has not finished within ``timeout`` is killed and reported hung.
    ``around_fork`` is entered just before the fork and left just after (in both processes).
    """
    read, write = os.pipe()
    with around_fork or contextlib.nullcontext():
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        code = 0
        try:
            answer = str(body())
        except BaseException as exc:
            answer, code = f"raised {type(exc).__name__}: {exc}", 1
        finally:
            with contextlib.suppress(BaseException):
                os.write(write, answer.encode())
            os._exit(code)
    os.close(write)
    return _collect(pid, read, timeout)


def _collect(pid: int, read: int, timeout: float) -> tuple[int, str]:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read], [], [], max(0.0, left))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return -1, f"hung: no answer within {timeout:g}s ({b''.join(chunks)!r} so far)"
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
    _, status = os.waitpid(pid, 0)  # the pipe closed: the child is exiting
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by a thread of the parent's while the body runs (a fork: the child's
    copy stays held, nobody there will release it)."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            done.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(5)
    try:
        yield
    finally:
        done.set()
        thread.join(5)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """WARNING lines of the library, in whichever process writes them (the child's own copy)."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="WARNING")
    logger.enable("actors")
    yield lines
    logger.disable("actors")
    logger.remove(sink)


def numbered_source() -> FunctionSource:
    """Grants t-<pid>-<n>-<tenant>: which process fetched a token, and how many it fetched."""
    count = itertools.count(1)

    def fetch(request: actors.TokenRequest) -> actors.Grant:
        return actors.Grant(f"t-{os.getpid()}-{next(count)}-{request.tenant_key}", 7200.0)

    return FunctionSource(fetch)


def test_a_child_starts_its_own_system_on_first_use_and_says_so_once(
    warnings: list[str],
) -> None:
    with actors.TokenSystem.start(MARKET, source=numbered_source()) as system:
        system.proxy.set_app_ticket("ticket").get(timeout=5)
        warm = system.proxy.get_token(tenant_key="warm").get(timeout=5)
        parent_ref = system.actor_ref

        def child() -> str:
            proxy = system.proxy  # the parent's app_ticket serves the child's actors too
            tokens = [proxy.get_token(tenant_key=t).get(timeout=5) for t in ("warm", "cold")]
            system.settle(timeout=5)
            metrics = system.metrics()
            running = [
                r is system.actor_ref for r in pykka.ActorRegistry.get_by_class(actors.TokenActor)
            ]
            answer = {
                "pid": os.getpid(),
                "tokens": tokens,
                "misses": metrics.misses,
                "warnings": [w for w in warnings if "before fork" in w],
                "new_ref": system.actor_ref is not parent_ref,
                "registry": running,
            }
            system.stop(timeout=5)
            answer["threads_after_stop"] = our_threads()
            return json.dumps(answer)

        code, text = in_child(child)
        assert code == 0, text
        answer = json.loads(text)
        # The parent is untouched: its token, its actors.
        assert system.proxy.get_token(tenant_key="warm").get(timeout=5) == warm
        assert system.actor_ref is parent_ref and parent_ref.is_alive()
    pid = answer["pid"]
    assert [t.split("-")[1] for t in answer["tokens"]] == [str(pid)] * 2  # fetched there
    assert answer["misses"] == 2  # the child's own counters
    assert answer["warnings"] == [
        "this TokenSystem was started before fork; started a new one in process "
        f"{pid}; start one per process, e.g. in a lifespan or post_fork hook"
    ]
    assert answer["new_ref"] is True
    assert answer["registry"] == [True]  # only the running TokenActor is registered there
    assert answer["threads_after_stop"] == []


def test_the_parent_keeps_working_after_a_fork() -> None:
    source = FunctionSource(lambda r: actors.Grant(f"t-{r.tenant_key or 'app'}", 7200.0))
    with actors.TokenSystem.start(MARKET, source=source) as system:
        system.proxy.set_app_ticket("ticket").get(timeout=5)
        code, _ = in_child(lambda: "ok")
        assert code == 0
        assert system.proxy.get_token(tenant_key="after").get(timeout=5) == "t-after"


def test_a_child_serves_past_the_inherited_tokens_expiry_and_refreshes_it_before(
    warnings: list[str],
) -> None:
    # Real time and a three-second token: a child warmed at import (gunicorn --preload) keeps
    # serving valid tokens well past the one it inherited, its own actors refreshing them.
    with FakeFeishu(token_lifetime=3.0, refresh_window=1.5) as server:
        server.add_app(APP_ID, SECRET)
        app = actors.AppConfig(APP_ID, SECRET, base_url=server.base_url)
        policy = actors.RefreshPolicy(safety_margin=0.5, prewarm_lead=1.2, jitter=0.0)
        with actors.TokenSystem.start(app, policy=policy) as system:
            inherited = system.proxy.get_token().get(timeout=5)
            inherited_expiry = server.expires_at(inherited)
            assert inherited_expiry is not None

            def child() -> str:
                served: list[tuple[str, float]] = []
                until = inherited_expiry + 1.5  # well past it, with its successor in use
                while time.monotonic() < until:
                    served.append((system.proxy.get_token().get(timeout=5), time.monotonic()))
                    time.sleep(0.05)  # a request every 50 ms, as a worker serving traffic
                metrics = system.metrics()
                system.stop(timeout=5)
                return json.dumps(
                    {
                        "served": served,
                        "misses": metrics.misses,
                        "prewarms": metrics.prewarms,
                        "warnings": sum("before fork" in w for w in warnings),
                    }
                )

            code, text = in_child(child)
    assert code == 0, text
    answer = json.loads(text)
    served = answer["served"]
    late = [(token, at) for token, at in served if not at < (server.expires_at(token) or 0)]
    assert late == []  # every token served was one Feishu still accepted
    assert served[-1][1] > inherited_expiry
    assert len({token for token, _ in served}) >= 2  # the inherited one was replaced
    assert answer["misses"] == 1  # the first use; every later token came from a prewarm
    assert answer["prewarms"] >= 1
    assert answer["warnings"] == 1


def test_a_session_given_to_start_gets_connection_pools_of_its_own_in_the_child(
    server: FakeFeishu, app: actors.AppConfig
) -> None:
    session = requests.Session()
    with actors.TokenSystem.start(app, session=session) as system:
        system.proxy.get_token().get(timeout=5)
        # The pooled keep-alive socket is the parent's; so is the pool's lock, held here by a
        # parent thread at the fork: the child must not go near either.
        pools = cast(Any, session.get_adapter(app.base_url)).poolmanager.pools

        def child() -> str:
            token: str = system.proxy.get_token(actors.TokenKind.APP).get(timeout=5)
            system.stop(timeout=5)
            return token

        code, text = in_child(child, timeout=15, around_fork=held_by_another_thread(pools.lock))
    assert code == 0, text
    assert server.expires_at(text) is not None  # a token the server issued, to the child


class RecordingStore(Store):
    """A store that records what is asked of it, and in which process."""

    made: ClassVar[list[RecordingStore]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []
        self.tickets: list[str] = []
        self._closed = False
        RecordingStore.made.append(self)

    def wrap(self, source: actors.TokenSource, policy: actors.RefreshPolicy) -> Any:
        self.calls.append(f"wrap in {os.getpid()}")
        return source

    def attach(self, on_notice: Callable[[str], object]) -> None:
        self.calls.append(f"attach in {os.getpid()}")

    def put_ticket(
        self, app: actors.AppConfig | str, ticket: str, *, made_at: float | None = None
    ) -> bool:
        self.calls.append(f"put_ticket in {os.getpid()}")
        self.tickets.append(ticket)
        return True

    def close(self, *, timeout: float = 2.0) -> None:
        self.calls.append(f"close in {os.getpid()}")
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


class ReopenableStore(RecordingStore):
    """``reopened()`` makes the store a forked child uses, as a real store opens connections
    of its own there."""

    def reopened(self) -> RecordingStore:
        self.calls.append(f"reopened in {os.getpid()}")
        return ReopenableStore(f"{self.name}, reopened")


@pytest.mark.parametrize("reopens", [True, False], ids=["reopenable", "not reopenable"])
def test_a_child_never_uses_the_parents_store(reopens: bool, warnings: list[str]) -> None:
    RecordingStore.made.clear()
    parent_store = (ReopenableStore if reopens else RecordingStore)("parent's")
    system = actors.TokenSystem.start(MARKET, source=numbered_source(), store=parent_store)
    try:
        before = list(parent_store.calls)

        def child() -> str:
            system.proxy.set_app_ticket("ticket-from-child").get(timeout=5)
            token = system.proxy.get_token(tenant_key="t").get(timeout=5)
            system.stop(timeout=5)
            stores = [
                {"name": s.name, "calls": s.calls, "tickets": s.tickets}
                for s in RecordingStore.made
            ]
            notes = [w for w in warnings if "before fork" in w]
            return json.dumps(
                {"pid": os.getpid(), "token": token, "stores": stores, "notes": notes}
            )

        code, text = in_child(child)
        assert parent_store.calls == before  # the child's calls never reach the parent
    finally:
        system.stop()
    assert code == 0, text
    answer = json.loads(text)
    pid = answer["pid"]
    parent_in_child, *reopened = answer["stores"]
    assert answer["token"].startswith(f"t-{pid}-")
    if reopens:
        # The parent's store is asked for a store of the child's own and nothing else; that
        # one serves the child's system from start to stop.
        assert parent_in_child["calls"][len(before) :] == [f"reopened in {pid}"]
        assert reopened == [
            {
                "name": "parent's, reopened",
                "calls": [f"{c} in {pid}" for c in ("wrap", "attach", "put_ticket", "close")],
                "tickets": ["ticket-from-child"],
            }
        ]
        assert answer["notes"][0].endswith("post_fork hook")
    else:
        # Nothing of the parent's store is touched (its locks and sockets are the parent's):
        # the child serves without the shared tier, and says so.
        assert parent_in_child["calls"][len(before) :] == []
        assert reopened == []
        assert len(answer["notes"]) == 1
        assert "not shared" in answer["notes"][0]


def test_a_callable_subscribed_before_fork_hears_the_childs_refreshes() -> None:
    heard: list[str] = []

    def listen(event: object) -> None:
        assert isinstance(event, actors.TokenRefreshed | actors.RefreshFailed)
        if event.tenant_key is not None:
            heard.append(f"{type(event).__name__} {event.tenant_key}")

    with actors.TokenSystem.start(MARKET, source=numbered_source()) as system:
        unsubscribe = system.subscribe(listen)

        def child() -> str:
            heard.clear()
            system.proxy.set_app_ticket("ticket").get(timeout=5)
            system.proxy.get_token(tenant_key="cold").get(timeout=5)
            system.settle(timeout=5)
            unsubscribe()
            system.proxy.get_token(tenant_key="after").get(timeout=5)
            system.settle(timeout=5)
            return json.dumps(heard)

        code, text = in_child(child)
    assert code == 0, text
    assert json.loads(text) == ["TokenRefreshed cold"]  # and nothing once unsubscribed


def test_a_coroutine_in_a_child_awaits_the_childs_own_system() -> None:
    with actors.TokenSystem.start(MARKET, source=numbered_source()) as system:
        system.proxy.set_app_ticket("ticket").get(timeout=5)

        def child() -> str:
            async def main() -> str:
                await system.proxy.aset_app_ticket("ticket")
                token: str = await system.proxy.aget_token(tenant_key="aio")
                return token

            return asyncio.run(main())

        code, text = in_child(child)
    assert code == 0, text
    assert text.startswith("t-") and text.endswith("-aio")


@pytest.mark.parametrize("moment", ["right after start", "while its pool is in use"])
def test_set_app_ticket_in_a_child_forked_from_a_redis_backed_system_completes(
    redis_server: RedisServer,  # noqa: F811 - the fixture imported above
    moment: str,
) -> None:
    from actors.stores import RedisStore

    store = RedisStore(redis_server.url, prefix="fork-test:")
    system = actors.TokenSystem.start(MARKET, source=numbered_source(), store=store)
    try:

        def child() -> str:
            system.proxy.set_app_ticket("ticket-from-child").get(timeout=5)
            token = system.proxy.get_token(tenant_key="t").get(timeout=5)
            system.stop(timeout=5)
            return token

        if moment == "right after start":
            # The notice listener is subscribing now, through the store's connection pool.
            code, text = in_child(child, timeout=15)
        else:
            # Forked while a parent thread holds the pool's lock, as the listener does for a
            # moment now and then: the child's copy of the lock stays held forever, so any use
            # of the parent's client there would hang.
            lock = cast(Any, store._client).connection_pool._lock  # redis-py's own
            code, text = in_child(child, timeout=15, around_fork=held_by_another_thread(lock))
        assert code == 0, text
        assert text.startswith("t-") and text.endswith("-t")
        # Written through the child's own store: the parent's pool was never used there.
        assert store.get_ticket(MARKET) == "ticket-from-child"
    finally:
        system.stop()

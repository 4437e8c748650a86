"""asyncio: awaiting a token never blocks the event loop."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Callable

import pykka
import pytest

import actors
from actors.testing import FakeFeishu, FunctionSource
from tests.conftest import APP_ID, SECRET

APP = actors.AppConfig("cli_aio", "secret")


async def heartbeat(stop: asyncio.Event, stalls: list[float], every: float = 0.001) -> None:
    """Wake every ``every`` seconds; record how late each wake-up was (the loop's stalls)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        planned = loop.time() + every
        await asyncio.sleep(every)
        stalls.append(loop.time() - planned)


def test_a_thousand_awaits_on_a_cold_key_share_one_request_and_never_stall_the_loop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeFeishu(latency=0.15) as server:  # 150 ms upstream
        server.add_app(APP_ID, SECRET)
        app = actors.AppConfig(APP_ID, SECRET, base_url=server.base_url)
        with actors.TokenSystem.start(app) as system:

            async def main() -> tuple[set[str], float]:
                stop, stalls = asyncio.Event(), list[float]()
                beat = asyncio.create_task(heartbeat(stop, stalls))
                await asyncio.sleep(0.01)
                tokens = await asyncio.gather(*(system.proxy.aget_token() for _ in range(1000)))
                stop.set()
                await beat
                return set(tokens), max(stalls)

            tokens, worst = asyncio.run(main())
        assert len(tokens) == 1
        assert server.count("tenant") == 1
    with capsys.disabled():
        print(
            f"\n1,000 awaits on a cold key, 150 ms upstream: worst loop stall {worst * 1e3:.1f} ms"
        )
    # pykka's own `await future` would block the loop for the whole 150 ms fetch; the stall here
    # is scheduling noise (a loaded CI machine can add tens of ms, never the fetch itself).
    assert worst < 0.15


def test_a_warm_key_is_answered_without_suspending() -> None:
    with actors.TokenSystem.start(APP, source=FunctionSource.constant("t-warm")) as system:
        assert system.proxy.get_token().get(timeout=5) == "t-warm"
        coroutine = system.proxy.aget_token()
        with pytest.raises(StopIteration) as done:
            coroutine.send(None)  # completes on its first step: no await, no thread hop
        assert done.value.value == "t-warm"


def test_cancelling_one_awaiter_affects_no_other() -> None:
    release = threading.Event()

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        release.wait(5)
        return actors.Grant("t-late", 7200.0)

    with actors.TokenSystem.start(APP, source=FunctionSource(fetch)) as system:

        async def main() -> list[object]:
            tasks = [asyncio.create_task(system.proxy.aget_token()) for _ in range(3)]
            await asyncio.sleep(0.01)
            tasks[1].cancel()
            release.set()
            return await asyncio.gather(*tasks, return_exceptions=True)

        results = asyncio.run(main())
    assert results[0] == results[2] == "t-late"
    assert isinstance(results[1], asyncio.CancelledError)


def test_stop_fails_pending_awaits_with_system_stopped() -> None:
    started: list[actors.TokenSystem] = []
    fetching = threading.Event()

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        # A fetch still in flight when stop() comes: it returns only once the TokenActor is
        # gone, so its grant can never answer the await, and stop() does not wait on it.
        fetching.set()
        started[0].actor_ref.actor_stopped.wait(5)
        return actors.Grant("t-never", 7200.0)

    system = actors.TokenSystem.start(APP, source=FunctionSource(fetch))
    started.append(system)
    try:

        async def main() -> None:
            pending = asyncio.create_task(system.proxy.aget_token())
            assert await asyncio.to_thread(fetching.wait, 5)
            await asyncio.to_thread(system.stop)
            with pytest.raises(actors.SystemStoppedError):
                await pending
            with pytest.raises(actors.SystemStoppedError):
                await system.proxy.aget_token(actors.TokenKind.APP)

        asyncio.run(main())
    finally:
        system.stop()


def test_one_system_serves_several_loops_and_threads_at_once() -> None:
    calls = []

    def fetch(request: actors.TokenRequest) -> actors.Grant:
        calls.append(request.kind)
        time.sleep(0.05)  # a slow upstream, so every loop's first await is a miss
        return actors.Grant(f"t-{request.kind}", 7200.0)

    with actors.TokenSystem.start(APP, source=FunctionSource(fetch)) as system:
        results: list[list[str]] = []

        def loop_in_a_thread() -> None:
            async def main() -> list[str]:
                return list(await asyncio.gather(*(system.proxy.aget_token() for _ in range(50))))

            results.append(asyncio.run(main()))

        threads = [threading.Thread(target=loop_in_a_thread) for _ in range(4)]
        for thread in threads:
            thread.start()
        sync = system.proxy.get_token().get(timeout=5)
        for thread in threads:
            thread.join(10)
    assert len(results) == 4
    assert {token for tokens in results for token in tokens} == {sync} == {"t-tenant"}
    assert calls == [actors.TokenKind.TENANT]


def test_ainvalidate_and_aset_app_ticket() -> None:
    tokens = iter(["t-1", "t-2"])
    market = actors.AppConfig("cli_am", "secret", app_type=actors.AppType.MARKETPLACE)

    def fetch(request: actors.TokenRequest) -> actors.Grant:
        if request.kind is actors.TokenKind.APP:
            return actors.Grant("a-app", 7200.0)
        return actors.Grant(next(tokens), 7200.0)

    with actors.TokenSystem.start(market, source=FunctionSource(fetch)) as system:

        async def main() -> None:
            await system.proxy.aset_app_ticket("ticket")
            first = await system.proxy.aget_token(tenant_key="tk")
            assert await system.proxy.ainvalidate(first) is True
            assert await system.proxy.ainvalidate(first) is False
            assert await system.proxy.aget_token(tenant_key="tk") == "t-2"
            with pytest.raises(ValueError, match="tenant_key is required"):
                await system.proxy.aget_token()
            with pytest.raises(ValueError, match="non-empty"):
                await system.proxy.aset_app_ticket("")

        asyncio.run(main())


@pytest.mark.parametrize(
    "derive",
    [lambda future: future, lambda future: future.map(str.upper)],
    ids=["the future", "a future mapped from it"],
)
def test_awaiting_a_miss_future_keeps_the_loop_running_until_the_token_arrives(
    derive: Callable[[pykka.Future[str]], pykka.Future[str]],
) -> None:
    gate = threading.Event()
    opened_by_the_loop: list[bool] = []

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        # Opened by a task on the event loop: only if the loop keeps running during the await.
        opened_by_the_loop.append(gate.wait(5))
        return actors.Grant("t-gated", 7200.0)

    with actors.TokenSystem.start(APP, source=FunctionSource(fetch)) as system:

        async def main() -> str:
            async def open_the_gate() -> None:
                for _ in range(10):  # ten loop iterations, more than one blocking await allows
                    await asyncio.sleep(0)
                gate.set()

            opener = asyncio.create_task(open_the_gate())
            token = await derive(system.proxy.get_token())
            await opener
            return token

        token = asyncio.run(main())
    assert opened_by_the_loop == [True]
    assert token.lower() == "t-gated"


def test_awaiting_a_hit_future_completes_without_suspending() -> None:
    with actors.TokenSystem.start(APP, source=FunctionSource.constant("t-warm")) as system:
        assert system.proxy.get_token().get(timeout=5) == "t-warm"

        async def hit() -> str:
            return await system.proxy.get_token()

        coroutine = hit()
        with pytest.raises(StopIteration) as done:
            coroutine.send(None)  # the already-resolved future gives its value on the first step
        assert done.value.value == "t-warm"


def test_awaiting_a_refused_request_raises_its_error_without_suspending() -> None:
    with actors.TokenSystem.start(APP, source=FunctionSource.constant()) as system:

        async def refused() -> str:
            return await system.proxy.get_token(app_id="cli_unknown")

        coroutine = refused()
        with pytest.raises(ValueError, match="cli_unknown"):
            coroutine.send(None)


def test_ametrics_returns_the_counters_as_a_value() -> None:
    with actors.TokenSystem.start(APP, source=FunctionSource.constant("t-m")) as system:

        async def main() -> actors.TokenMetrics:
            await system.proxy.aget_token()
            return await system.proxy.ametrics()

        metrics = asyncio.run(main())
    assert isinstance(metrics, actors.TokenMetrics)
    assert metrics.misses == 1


def _uvloop_factory() -> asyncio.AbstractEventLoop:
    uvloop = pytest.importorskip("uvloop")
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


LOOP_FACTORIES = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(_uvloop_factory, id="uvloop"),
]


@pytest.mark.parametrize("loop_factory", LOOP_FACTORIES)
@pytest.mark.parametrize("closed", ["before the answer", "after the answer, before running it"])
def test_loops_closed_while_their_awaits_are_pending_are_not_kept_alive(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], closed: str
) -> None:
    release = threading.Event()

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        release.wait(10)
        return actors.Grant("t-late", 7200.0)

    async def park(system: actors.TokenSystem) -> None:
        # Every way to await a miss: the coroutine (one shared future per loop and key) and
        # the futures of the plain methods (parked on a DeferredFuture).
        awaits = [
            system.proxy.aget_token(),
            system.proxy.aget_token(),
            _await(system.proxy.get_token()),
            _await(system.proxy.get_token(actors.TokenKind.APP)),
        ]
        tasks = [asyncio.ensure_future(coroutine) for coroutine in awaits]
        for _ in range(5):  # each task runs to its first suspension
            await asyncio.sleep(0)
        # The loop's code gives up (as asyncio.run does with what is left when it ends): the
        # library's side of each await is still pending.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with actors.TokenSystem.start(APP, source=FunctionSource(fetch)) as system:
        loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
        open_loops: list[asyncio.AbstractEventLoop] = []
        for _ in range(50):
            loop = loop_factory()
            loop.run_until_complete(park(system))
            loops.append(weakref.ref(loop))
            if closed == "before the answer":
                loop.close()  # the futures the library answers later belong to a closed loop
            else:
                open_loops.append(loop)
            del loop
        release.set()
        system.settle(timeout=10)  # every answer handed over (or dropped for a closed loop)
        while open_loops:
            open_loops.pop().close()  # the answers sit in its queue, never run
        gc.collect()
        alive = sum(ref() is not None for ref in loops)
        assert alive == 0, f"{alive} of 50 closed loops are still referenced"
        assert system.proxy.get_token().get(timeout=5) == "t-late"


async def _await(future: pykka.Future[str]) -> str:
    return await future

"""The futures handed to callers: every way a caller may use a ``pykka.Future`` works, and an
event loop awaits them without blocking."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

import pykka
import pytest

from actors._messages import DeferredFuture, ResolvedFuture, resolved_future


def test_get_returns_the_value_with_or_without_a_timeout() -> None:
    future = resolved_future("t-abc")
    assert isinstance(future, ResolvedFuture)
    assert isinstance(future, pykka.Future)
    assert future.get() == "t-abc"
    assert future.get(timeout=0) == "t-abc"
    assert future.get(timeout=1.5) == "t-abc"
    assert future.get() == "t-abc"  # as often as asked


@pytest.mark.parametrize("value", [None, "", 0, False, []], ids=repr)
def test_falsy_values_are_values_too(value: Any) -> None:
    assert resolved_future(value).get(timeout=0) == value


def test_map_filter_and_reduce_derive_new_futures() -> None:
    assert resolved_future("t-abc").map(str.upper).get(timeout=0) == "T-ABC"
    assert resolved_future("t-abc").map(len).map(str).get() == "5"
    numbers: Iterable[int] = [1, 5, 12]
    assert list(resolved_future(numbers).filter(lambda n: n > 3).get(timeout=0)) == [5, 12]
    assert resolved_future(numbers).reduce(lambda a, b: a + b).get(timeout=0) == 18


def test_join_combines_with_resolved_and_threading_futures() -> None:
    later: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    joined = resolved_future("t-abc").join(resolved_future("t-def"), later)
    with pytest.raises(pykka.Timeout):
        joined.get(timeout=0)  # waits for the ThreadingFuture, within the timeout given
    later.set("t-ghi")
    assert list(joined.get(timeout=1)) == ["t-abc", "t-def", "t-ghi"]


def test_get_all_collects_resolved_and_threading_futures() -> None:
    done: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    done.set("t-def")
    futures: list[pykka.Future[str]] = [resolved_future("t-abc"), done]
    assert list(pykka.get_all(futures)) == ["t-abc", "t-def"]
    assert list(pykka.get_all(futures, timeout=0)) == ["t-abc", "t-def"]


def test_await_gives_the_value() -> None:
    async def main() -> list[str]:
        return [await resolved_future("t-abc"), await resolved_future("t-abc").map(str.upper)]

    assert asyncio.run(main()) == ["t-abc", "T-ABC"]


def test_a_resolved_future_cannot_be_set_again() -> None:
    future = resolved_future("t-abc")
    with pytest.raises(RuntimeError):
        future.set("t-other")
    with pytest.raises(RuntimeError):
        future.set_exception((ValueError, ValueError("no"), None))
    assert future.get(timeout=0) == "t-abc"


def test_a_deferred_future_set_from_another_thread_wakes_awaiters_on_several_loops() -> None:
    future: DeferredFuture[str] = DeferredFuture()
    parked = threading.Barrier(3)

    def await_on_a_new_loop(results: list[str]) -> None:
        async def main() -> str:
            waiting = asyncio.ensure_future(_await(future))
            await asyncio.sleep(0)  # the await is parked on the future now
            await asyncio.to_thread(parked.wait, 5)
            return await waiting

        results.append(asyncio.run(main()))

    results: list[str] = []
    threads = [threading.Thread(target=await_on_a_new_loop, args=(results,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    parked.wait(5)
    future.set("t-later")
    for thread in threads:
        thread.join(5)
    assert results == ["t-later", "t-later"]
    assert future.get(timeout=0) == "t-later"


async def _await(future: pykka.Future[str]) -> str:
    return await future


def test_awaiting_a_deferred_future_that_fails_raises_its_exception() -> None:
    future: DeferredFuture[str] = DeferredFuture()

    async def main() -> str:
        waiting = asyncio.ensure_future(_await(future))
        await asyncio.sleep(0)
        future.set_exception((ValueError, ValueError("bad tenant_key"), None))
        return await waiting

    with pytest.raises(ValueError, match="bad tenant_key"):
        asyncio.run(main())


def test_an_answered_deferred_future_is_awaited_without_suspending() -> None:
    future: DeferredFuture[str] = DeferredFuture()
    future.set("t-abc")
    coroutine = _await(future)
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    assert done.value.value == "t-abc"


def test_cancelling_one_await_of_a_deferred_future_leaves_the_others_their_answer() -> None:
    future: DeferredFuture[str] = DeferredFuture()

    async def main() -> list[object]:
        tasks = [asyncio.ensure_future(_await(future)) for _ in range(3)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        await asyncio.sleep(0)
        future.set("t-abc")
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] == results[2] == "t-abc"
    assert isinstance(results[1], asyncio.CancelledError)
    assert future.get(timeout=0) == "t-abc"


def test_an_answer_after_the_awaiting_loop_closed_is_dropped_quietly() -> None:
    future: DeferredFuture[str] = DeferredFuture()

    async def give_up() -> None:
        waiting = asyncio.ensure_future(_await(future))
        await asyncio.sleep(0)
        waiting.cancel()

    asyncio.run(give_up())  # the loop is closed now, its awaiter still parked on the future
    future.set("t-abc")
    assert future.get(timeout=0) == "t-abc"


def test_awaiting_a_join_awaits_every_joined_future() -> None:
    later: DeferredFuture[str] = DeferredFuture()

    async def main() -> list[str]:
        joined = resolved_future("t-abc").join(later)
        waiting = asyncio.ensure_future(_await_join(joined))
        await asyncio.sleep(0)
        assert not waiting.done()
        later.set("t-def")
        return await waiting

    assert asyncio.run(main()) == ["t-abc", "t-def"]


async def _await_join(future: pykka.Future[Iterable[str]]) -> list[str]:
    return list(await future)

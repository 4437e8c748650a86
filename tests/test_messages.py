"""Already-resolved futures (cache hits): every way a caller may use a ``pykka.Future`` works."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pykka
import pytest

from actors._messages import ResolvedFuture, resolved_future


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

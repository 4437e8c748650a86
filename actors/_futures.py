"""Futures handed to callers: one per request, and already-resolved ones for cache hits."""

from __future__ import annotations

from typing import Any, TypeVar

import pykka

__all__ = ["ResolvedFuture", "resolved_future"]

T = TypeVar("T")


class ResolvedFuture(pykka.Future[T]):
    """A ``pykka.Future`` born with its value: ``get()`` returns it at once, no lock, no wait.

    Built on ``pykka.Future``'s public behaviour only. pykka's ``map()``/``filter()``/``join()``/
    ``reduce()`` make new futures with ``self.__class__()`` and give them a get hook: without a
    value, ``get()`` defers to ``pykka.Future.get``, which runs that hook.
    """

    __slots__ = ("_value",)

    def __init__(self, *value: T) -> None:
        super().__init__()
        self._value = value

    def get(self, *, timeout: float | None = None) -> T:
        if self._value:
            return self._value[0]
        return super().get(timeout=timeout)

    def set(self, value: Any = None) -> None:
        msg = "a ResolvedFuture is resolved on creation; it cannot be set again"
        raise RuntimeError(msg)

    def set_exception(self, exc_info: Any = None) -> None:
        msg = "a ResolvedFuture is resolved on creation; it cannot fail afterwards"
        raise RuntimeError(msg)


def resolved_future(value: T) -> ResolvedFuture[T]:
    """An already-resolved ``pykka.Future`` holding ``value``, cheap to make."""
    return ResolvedFuture(value)

"""Clocks: the one source of time for expiry, prewarm, retry backoff and ticket waits.

Every time-based decision in the system reads ``clock.now()``; nothing calls ``time`` directly.
With a :class:`ManualClock` nothing time-based happens until :meth:`ManualClock.advance` is
called, which is what makes tests and simulations deterministic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock", "wall_time"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic source of seconds.

    ``wait(event, deadline)`` blocks the calling thread until ``event`` is set or the clock
    reaches ``deadline`` (an absolute time on this clock; ``None``: no deadline); it is how the
    scheduler's timer driver sleeps. ``subscribe(callback)`` registers a callable invoked after
    the clock jumps (a manual clock's ``advance``, which is how a :class:`ManualClock` ticks the
    scheduler without a driver thread); a real clock never jumps and ignores it.
    """

    def now(self) -> float: ...

    def wait(self, event: threading.Event, deadline: float | None) -> bool: ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]: ...


class SystemClock:
    """Real time, from :func:`time.monotonic` (immune to wall-clock jumps)."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        """Unix seconds: what processes sharing a store compare (grant lifetimes)."""
        return time.time()

    def wait(self, event: threading.Event, deadline: float | None) -> bool:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        # A far deadline overflows the platform's timed wait (OverflowError); waking once an
        # hour costs nothing, and the caller simply waits again.
        return event.wait(None if timeout is None else min(timeout, _LONGEST_WAIT))

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        del callback
        return _noop

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """Virtual time that only moves when told to.

    Example:
        >>> clock = ManualClock(start=100.0)
        >>> clock.advance(60)
        >>> clock.now()
        160.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        """A virtual wall clock: Unix seconds that move with :meth:`advance` (every
        ManualClock shares its epoch, so systems on one store and one virtual time agree)."""
        return _VIRTUAL_EPOCH + self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and tell every subscriber (the scheduler fires what
        became due)."""
        if seconds < 0:
            msg = f"ManualClock.advance: seconds must be >= 0, got {seconds!r}"
            raise ValueError(msg)
        with self._lock:
            self._now += seconds
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def wait(self, event: threading.Event, deadline: float | None) -> bool:
        # Virtual deadlines are reached through advance(), which calls the subscribers and so
        # sets the event. A deadline already reached returns at once: the advance that reached
        # it may have happened before the waiter cleared its event.
        if deadline is not None and self._now >= deadline:
            return True
        return event.wait()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"


_LONGEST_WAIT = 3600.0
_VIRTUAL_EPOCH = 1_800_000_000.0  # 2027-01-15: where every ManualClock's wall time starts


def wall_time(clock: Clock) -> float:
    """``clock``'s wall time in Unix seconds (its ``wall()``; a clock without one: real time)."""
    wall = getattr(clock, "wall", None)
    return float(wall()) if callable(wall) else time.time()


def _noop() -> None:
    return None

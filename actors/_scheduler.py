"""The scheduler actor: the one timer mechanism of the system.

Each key's one pending timer (a prewarm, a retry's backoff or an app_ticket wait's deadline) and
the periodic report are delayed messages kept in one :class:`DeadlineIndex` (a
``sortedcontainers.SortedList``: schedule, replace, cancel and pop in O(log n)). Every deadline
is an absolute time on the system's clock: a timer's due time, the index's order, the driver's
wait (``Clock.wait(event, deadline)``); nothing here converts to a relative timeout but the
clock itself.

The timer path, from the TokenActor and back:

1. ``Timers.at`` tells this actor ``Schedule`` (a mailbox hop). Re-arming a key's timer names
   the timer it replaces, so it stays one message, never a Cancel and a Schedule.
2. The actor files it. A timer that is now the earliest deadline wakes the driver; any other
   leaves the driver asleep. (A timer already due when set never gets here: ``Timers.at`` tells
   it to its owner at once, one hop in all.)
3. Real clock: one driver thread sleeps until the earliest deadline and tells the actor
   ``Tick`` (a hop). It earns its keep: a pykka mailbox has no timed receive, so an actor cannot
   wake itself at a time, and an actor that slept in a handler would hold up every other message
   (``stop()`` included). A :class:`~actors.ManualClock` needs no thread: ``advance()`` tells the
   Tick itself.
4. On Tick the actor pops every due timer in due order and tells each its message (a hop).

So a future timer is three hops and at most one driver wake-up on a real clock.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

import pykka
from loguru import logger
from sortedcontainers import SortedList

from actors._clock import Clock, ManualClock
from actors._errors import plain_traceback

__all__ = ["Cancel", "DeadlineIndex", "NextDue", "Schedule", "SchedulerActor", "Tick", "Timers"]


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """Deliver ``message`` to ``target`` once the clock reaches ``due``, instead of the timer
    ``replaces`` (if still pending). Ids are the sender's."""

    timer_id: int
    due: float
    target: pykka.ActorRef[Any]
    message: Any
    replaces: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    timer_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Fire everything due at the clock's current time; asked, it answers how many fired."""


@dataclasses.dataclass(frozen=True, slots=True)
class NextDue:
    """Asked: the earliest due time, or None."""


class DeadlineIndex:
    """Timers ordered by due time; ties fire in scheduling order (ids increase)."""

    def __init__(self) -> None:
        self._order: SortedList = SortedList()
        self._entries: dict[int, tuple[float, pykka.ActorRef[Any], Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def schedule(
        self, timer_id: int, due: float, target: pykka.ActorRef[Any], message: Any
    ) -> None:
        if not math.isfinite(due):  # a NaN would corrupt the order, infinity never fires
            msg = f"a timer's due time must be a finite number, got {due!r}"
            raise ValueError(msg)
        self.cancel(timer_id)
        self._entries[timer_id] = (due, target, message)
        self._order.add((due, timer_id))

    def cancel(self, timer_id: int | None) -> bool:
        entry = self._entries.pop(timer_id, None) if timer_id is not None else None
        if entry is None:
            return False
        self._order.remove((entry[0], timer_id))
        return True

    def next_due(self) -> float | None:
        return self._order[0][0] if self._order else None

    def pop_due(self, now: float) -> list[tuple[pykka.ActorRef[Any], Any]]:
        """Remove and return, in due order, every timer with ``due <= now``."""
        count = self._order.bisect_right((now, float("inf")))
        due = [self._order[i][1] for i in range(count)]
        del self._order[:count]
        fired = []
        for timer_id in due:
            _, target, message = self._entries.pop(timer_id)
            fired.append((target, message))
        return fired


class SchedulerActor(pykka.ThreadingActor):
    """Owns the DeadlineIndex; answers Schedule / Cancel / Tick / NextDue messages."""

    use_daemon_thread = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self._clock = clock
        self._index = DeadlineIndex()
        self._driver: _Driver = (
            _AdvanceTicks(clock, self.actor_ref)
            if isinstance(clock, ManualClock)
            else _TimerDriver(clock, self.actor_ref)
        )

    def on_start(self) -> None:
        self._driver.start()

    def on_stop(self) -> None:
        self._driver.stop()

    def on_failure(self, *_: object) -> None:
        self._driver.stop()

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except Exception as exc:  # an exception escaping here would stop every timer for good
            logger.error(
                "scheduler could not handle {}:\n{}", type(message).__name__, plain_traceback(exc)
            )
            return None

    def _handle(self, message: Any) -> Any:
        if isinstance(message, Schedule):
            self._index.cancel(message.replaces)
            self._index.schedule(message.timer_id, message.due, message.target, message.message)
        elif isinstance(message, Tick):
            return self._fire()
        elif isinstance(message, Cancel):
            self._index.cancel(message.timer_id)
        elif isinstance(message, NextDue):
            return self._index.next_due()
        self._driver.rearm(self._index.next_due())
        return None

    def _fire(self) -> int:
        fired = self._index.pop_due(self._clock.now())
        for target, message in fired:
            try:
                target.tell(message)
            except pykka.ActorDeadError:  # the target stopped first; its timers died with it
                pass
        self._driver.rearm(self._index.next_due(), ticked=True)
        return len(fired)


class Timers:
    """An actor's handle on the scheduler: timers whose message comes back to that actor."""

    def __init__(
        self, scheduler: pykka.ActorRef[Any], target: pykka.ActorRef[Any], clock: Clock
    ) -> None:
        self._scheduler = scheduler
        self._target = target
        self._clock = clock
        self._ids = itertools.count(1)

    def at(self, due: float, make: Callable[[int], Any], *, replaces: int | None = None) -> int:
        """Deliver ``make(timer_id)`` to the owner at ``due`` instead of the timer ``replaces``;
        returns the new timer's id. A timer already due goes straight to the owner's mailbox."""
        timer_id = next(self._ids)
        message = make(timer_id)
        if due <= self._clock.now():
            self._target.tell(message)
            self.cancel(replaces)
        else:
            self._scheduler.tell(Schedule(timer_id, due, self._target, message, replaces))
        return timer_id

    def cancel(self, timer_id: int | None) -> None:
        if timer_id is not None:
            self._scheduler.tell(Cancel(timer_id))


class _Driver:
    """What wakes the scheduler at its earliest deadline."""

    def start(self) -> None: ...

    def rearm(self, next_due: float | None, *, ticked: bool = False) -> None:
        """The earliest deadline is now ``next_due``; ``ticked``: the actor handled a Tick."""

    def stop(self) -> None: ...


class _AdvanceTicks(_Driver):
    """A manual clock's deadlines are reached only by ``advance()``, which ticks the actor."""

    def __init__(self, clock: Clock, ref: pykka.ActorRef[Any]) -> None:
        self._ref = ref
        # From construction on: an advance() before the actor's thread runs still ticks it.
        self._unsubscribe = clock.subscribe(self._tick)

    def _tick(self) -> None:
        try:
            self._ref.tell(Tick())
        except pykka.ActorDeadError:  # advanced after the system stopped
            pass

    def stop(self) -> None:
        self._unsubscribe()


class _TimerDriver(_Driver):
    """One thread that sleeps until the earliest deadline and then tells the actor to Tick.

    At most one Tick is outstanding: until the actor has handled it (and rearmed the driver),
    the deadline the driver last saw is still in the index, and without that rule the driver
    would send Tick after Tick while the actor waits for the GIL.
    """

    def __init__(self, clock: Clock, ref: pykka.ActorRef[Any]) -> None:
        self._clock = clock
        self._ref = ref
        self._wake = threading.Event()
        self._next_due: float | None = None
        self._ticking = False  # a Tick was sent and the actor has not handled it yet
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="actors-timer-driver", daemon=True)
        self._unsubscribe = clock.subscribe(self._wake.set)

    def start(self) -> None:
        self._thread.start()

    def rearm(self, next_due: float | None, *, ticked: bool = False) -> None:
        if ticked:
            self._ticking = False
        # A later (or no) deadline needs no wake-up: the driver wakes at the one it has, sends a
        # Tick that fires nothing, and learns the new one then.
        earlier = next_due is not None and (self._next_due is None or next_due < self._next_due)
        self._next_due = next_due
        if ticked or earlier:
            self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._unsubscribe()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stopped:
            try:
                if not self._step():
                    return
            except Exception as exc:
                # Every timer of the system depends on this thread: log and keep going.
                logger.error("timer driver error (it keeps running):\n{}", plain_traceback(exc))
                self._wake.wait(_ERROR_PAUSE)
        logger.trace("timer driver stopped")

    def _step(self) -> bool:
        # Clear before reading next_due: a rearm() racing with this loop then sets the event
        # again and the wait below returns at once instead of sleeping past the new deadline.
        self._wake.clear()
        due = None if self._ticking else self._next_due
        self._clock.wait(self._wake, due)
        if self._stopped:
            return False
        if due is not None and not self._ticking and self._clock.now() >= due:
            self._ticking = True
            try:
                self._ref.tell(Tick())
            except pykka.ActorDeadError:
                return False
        return True


_ERROR_PAUSE = 0.05  # seconds between retries after an unexpected error, so it cannot spin

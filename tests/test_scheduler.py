"""The DeadlineIndex and the SchedulerActor: one timer mechanism, on real or virtual time."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any, cast

import pykka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actors
from actors._scheduler import (
    Cancel,
    DeadlineIndex,
    NextDue,
    Schedule,
    SchedulerActor,
    Tick,
    TicksSent,
)

REF: Any = object()  # the index only stores targets; it never calls them

ops = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 20), st.floats(0, 100)),
        st.tuples(st.just("cancel"), st.integers(0, 20), st.just(0.0)),
        st.tuples(st.just("pop"), st.just(0), st.floats(0, 100)),
    ),
    max_size=80,
)


@given(ops)
@settings(max_examples=300, deadline=None)
def test_deadline_index_behaves_like_a_sorted_model(
    operations: list[tuple[str, int, float]],
) -> None:
    index = DeadlineIndex()
    model: dict[int, float] = {}
    for op, timer_id, value in operations:
        if op == "schedule":
            index.schedule(timer_id, value, REF, ("msg", timer_id))
            model[timer_id] = value
        elif op == "cancel":
            assert index.cancel(timer_id) == (timer_id in model)
            model.pop(timer_id, None)
        else:
            fired = [message[1] for _, message in index.pop_due(value)]
            expected = sorted((due, tid) for tid, due in model.items() if due <= value)
            assert fired == [tid for _, tid in expected]  # due order, ties by id
            for tid in fired:
                del model[tid]
        assert len(index) == len(model)
        assert index.next_due() == (min(model.values()) if model else None)


class Deliveries:
    """What a Recorder received, in order; tests wait for a count instead of sleeping."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.got: list[Any] = []

    def add(self, message: Any) -> None:
        with self._cond:
            self.got.append(message)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.got) >= count, timeout)


class Recorder(pykka.ThreadingActor):
    def __init__(self, deliveries: Deliveries) -> None:
        super().__init__()
        self.deliveries = deliveries

    def on_receive(self, message: Any) -> None:
        self.deliveries.add(message)


def test_manual_clock_fires_exactly_what_advance_makes_due() -> None:
    # advance() also wakes the timer driver, which may tell the scheduler to Tick on its own.
    # A Tick asked right after advance() thus races with the driver's: whichever the scheduler
    # handles first fires the due timers and the other fires nothing, so the count one Tick
    # answers is 0 or 1. What is deterministic is the total across both: the deliveries.
    # The asked Tick is still needed: it is handled after advance(), so everything due has fired
    # once it returns, whether or not the driver's wake-up got there first.
    clock = actors.ManualClock(start=0.0)
    deliveries = Deliveries()
    scheduler = SchedulerActor.start(clock)
    recorder = Recorder.start(deliveries)

    def fired_after_advance(seconds: float) -> list[Any]:
        before = len(deliveries.got)
        clock.advance(seconds)
        scheduler.ask(Tick())
        recorder.ask("sync")  # told after anything fired, so it arrives last
        return deliveries.got[before:-1]

    try:
        for timer_id, due in [(1, 10.0), (2, 5.0), (3, 20.0)]:
            scheduler.tell(Schedule(timer_id, due, recorder, f"t{timer_id}"))
        scheduler.tell(Cancel(3))
        assert scheduler.ask(Tick()) == 0  # nothing is due at 0, for the driver either
        assert fired_after_advance(4.0) == []
        assert fired_after_advance(1.0) == ["t2"]
        assert scheduler.ask(NextDue()) == 10.0
        assert fired_after_advance(0.0) == []  # fired once, not again
        assert fired_after_advance(100.0) == ["t1"]  # t3 was cancelled
        assert scheduler.ask(NextDue()) is None
        assert scheduler.ask(Tick()) == 0
    finally:
        scheduler.stop()
        recorder.stop()


@dataclasses.dataclass
class RealTime:
    """A scheduler on the system clock and a recorder of what it delivers."""

    clock: actors.SystemClock
    scheduler: pykka.ActorRef[SchedulerActor]
    recorder: pykka.ActorRef[Recorder]
    deliveries: Deliveries

    def at(self, timer_id: int, delay: float, message: Any) -> None:
        self.scheduler.tell(Schedule(timer_id, self.clock.now() + delay, self.recorder, message))


@pytest.fixture
def real_time() -> Iterator[RealTime]:
    deliveries = Deliveries()
    clock = actors.SystemClock()
    running = RealTime(clock, SchedulerActor.start(clock), Recorder.start(deliveries), deliveries)
    yield running
    running.scheduler.stop()
    running.recorder.stop()


def test_system_clock_driver_fires_without_being_ticked(real_time: RealTime) -> None:
    real_time.at(1, 0.05, "later")
    real_time.at(2, 0.0, "now")
    assert real_time.deliveries.wait_for(2)  # the driver sleeps until each deadline, then ticks
    assert real_time.deliveries.got == ["now", "later"]


def test_stopping_the_scheduler_stops_its_driver_thread() -> None:
    scheduler = SchedulerActor.start(actors.SystemClock())
    scheduler.stop()
    assert not [t for t in threading.enumerate() if t.name == "actors-timer-driver"]


def test_the_system_clock_driver_sends_about_one_tick_per_timer(real_time: RealTime) -> None:
    # The driver used to re-send Ticks for a deadline the actor had not removed yet: 54,629 Ticks
    # for 44 timers in 6 s. At most one Tick is outstanding now.
    for i in range(40):
        real_time.at(i, 0.005 * i, i)
    assert real_time.deliveries.wait_for(40)
    ticks = cast("int", real_time.scheduler.ask(TicksSent()))
    assert sorted(real_time.deliveries.got) == list(range(40))
    assert ticks <= 40 + 2  # one per deadline at most, give or take a race with a rearm


def test_a_non_finite_due_time_is_refused_and_the_timers_keep_firing(real_time: RealTime) -> None:
    real_time.scheduler.tell(Schedule(1, float("nan"), real_time.recorder, "nan"))
    real_time.scheduler.tell(Schedule(2, float("inf"), real_time.recorder, "inf"))
    real_time.at(3, 0.0, "now")
    assert real_time.deliveries.wait_for(1)
    assert real_time.deliveries.got == ["now"]
    assert real_time.scheduler.is_alive()
    assert real_time.scheduler.ask(NextDue()) is None  # neither bad timer was stored


def test_a_far_deadline_does_not_kill_the_timer_thread(real_time: RealTime) -> None:
    # 1e10 s ahead overflowed the platform's timed wait and killed the driver for good.
    real_time.at(1, 1e10, "far")
    assert real_time.scheduler.ask(NextDue()) is not None
    real_time.at(2, 0.0, "now")
    assert real_time.deliveries.wait_for(1)
    assert real_time.deliveries.got == ["now"]
    assert [t for t in threading.enumerate() if t.name == "actors-timer-driver"]


def test_manual_clock_wait_returns_at_once_for_a_deadline_already_reached() -> None:
    clock = actors.ManualClock(start=10.0)
    never_set = threading.Event()
    assert clock.wait(never_set, 5.0)
    assert clock.wait(never_set, 10.0)

"""The DeadlineIndex and the SchedulerActor: one timer mechanism, on real or virtual time."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

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
    Timers,
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


@dataclasses.dataclass
class Running:
    """A scheduler on a clock and a recorder of what it delivers."""

    clock: Any
    scheduler: pykka.ActorRef[SchedulerActor]
    recorder: pykka.ActorRef[Recorder]
    deliveries: Deliveries

    @classmethod
    def start(cls, clock: actors.Clock) -> Running:
        deliveries = Deliveries()
        return cls(clock, SchedulerActor.start(clock), Recorder.start(deliveries), deliveries)

    def stop(self) -> None:
        self.scheduler.stop()
        self.recorder.stop()

    def at(self, timer_id: int, delay: float, message: Any) -> None:
        self.scheduler.tell(Schedule(timer_id, self.clock.now() + delay, self.recorder, message))

    def delivered(self) -> list[Any]:
        """Everything delivered so far (the recorder is asked last, so it has it all)."""
        self.recorder.ask("sync")
        got = self.deliveries.got[:-1]
        self.deliveries.got.clear()
        return got


@pytest.fixture
def real_time() -> Iterator[Running]:
    running = Running.start(actors.SystemClock())
    yield running
    running.stop()


@pytest.fixture
def manual_time() -> Iterator[Running]:
    running = Running.start(actors.ManualClock(start=0.0))
    yield running
    running.stop()


def test_manual_clock_fires_exactly_what_advance_makes_due(manual_time: Running) -> None:
    # advance() tells the scheduler a Tick itself (a manual clock needs no driver thread), so the
    # Tick asked right after it is handled second and finds nothing left to fire.
    scheduler, clock = manual_time.scheduler, manual_time.clock

    def fired_after_advance(seconds: float) -> list[Any]:
        clock.advance(seconds)
        assert scheduler.ask(Tick()) == 0
        return manual_time.delivered()

    for timer_id, due in [(1, 10.0), (2, 5.0), (3, 20.0)]:
        manual_time.at(timer_id, due, f"t{timer_id}")
    scheduler.tell(Cancel(3))
    assert scheduler.ask(Tick()) == 0  # nothing is due at 0
    assert fired_after_advance(4.0) == []
    assert fired_after_advance(1.0) == ["t2"]
    assert scheduler.ask(NextDue()) == 10.0
    assert fired_after_advance(0.0) == []  # fired once, not again
    assert fired_after_advance(100.0) == ["t1"]  # t3 was cancelled
    assert scheduler.ask(NextDue()) is None


def test_a_manual_clock_needs_no_timer_thread(manual_time: Running) -> None:
    assert not [t for t in threading.enumerate() if t.name == "actors-timer-driver"]


def test_a_schedule_replaces_the_timer_it_names(manual_time: Running) -> None:
    manual_time.at(1, 5.0, "first")
    manual_time.scheduler.tell(Schedule(2, 8.0, manual_time.recorder, "second", replaces=1))
    assert manual_time.scheduler.ask(NextDue()) == 8.0
    manual_time.clock.advance(10.0)
    manual_time.scheduler.ask(Tick())
    assert manual_time.delivered() == ["second"]


def test_a_timer_already_due_goes_straight_to_its_owner(manual_time: Running) -> None:
    manual_time.clock.advance(50.0)
    timers = Timers(manual_time.scheduler, manual_time.recorder, manual_time.clock)
    timers.at(40.0, lambda timer_id: ("due", timer_id))
    assert manual_time.delivered() == [("due", 1)]
    assert manual_time.scheduler.ask(NextDue()) is None  # the scheduler never saw it


def test_system_clock_driver_fires_without_being_ticked(real_time: Running) -> None:
    real_time.at(1, 0.05, "later")
    real_time.at(2, 0.0, "now")
    assert real_time.deliveries.wait_for(2)  # the driver sleeps until each deadline, then ticks
    assert real_time.deliveries.got == ["now", "later"]


def test_stopping_the_scheduler_stops_its_driver_thread() -> None:
    scheduler = SchedulerActor.start(actors.SystemClock())
    scheduler.stop()
    assert not [t for t in threading.enumerate() if t.name == "actors-timer-driver"]


class WaitCountingClock(actors.SystemClock):
    """Real time that counts the driver's waits: the driver waits once per wake-up."""

    def __init__(self) -> None:
        self.waits = 0

    def wait(self, event: threading.Event, deadline: float | None) -> bool:
        self.waits += 1
        return super().wait(event, deadline)


def test_the_system_clock_driver_wakes_about_once_per_timer() -> None:
    # A driver that re-sent Ticks for a deadline the actor had not removed yet made 54,629
    # Ticks for 44 timers in 6 s: at most one Tick is outstanding, and a timer that is not the
    # earliest does not wake the driver at all.
    clock = WaitCountingClock()
    running = Running.start(clock)
    try:
        for i in range(40):
            running.at(i, 0.2 - 0.005 * i, i)  # each the new earliest
        for i in range(40, 80):
            running.at(i, 0.3 + 0.005 * i, i)  # never the earliest
        assert running.deliveries.wait_for(80)
        assert sorted(running.deliveries.got) == list(range(80))
        # Per timer: a wake-up to sleep for it if it became the earliest, one when it is due,
        # one after its Tick (give or take a race with a rearm).
        assert clock.waits <= 40 * 3 + 40 * 2 + 4
    finally:
        running.stop()


def test_a_non_finite_due_time_is_refused_and_the_timers_keep_firing(real_time: Running) -> None:
    real_time.scheduler.tell(Schedule(1, float("nan"), real_time.recorder, "nan"))
    real_time.scheduler.tell(Schedule(2, float("inf"), real_time.recorder, "inf"))
    real_time.at(3, 0.0, "now")
    assert real_time.deliveries.wait_for(1)
    assert real_time.deliveries.got == ["now"]
    assert real_time.scheduler.is_alive()
    assert real_time.scheduler.ask(NextDue()) is None  # neither bad timer was stored


def test_a_far_deadline_does_not_kill_the_timer_thread(real_time: Running) -> None:
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

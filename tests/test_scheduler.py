"""The DeadlineIndex and the SchedulerActor: one timer mechanism, on real or virtual time."""

from __future__ import annotations

import threading
from typing import Any

import pykka
from hypothesis import given, settings
from hypothesis import strategies as st

import actors
from actors._scheduler import Cancel, DeadlineIndex, NextDue, Schedule, SchedulerActor, Tick

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


class Recorder(pykka.ThreadingActor):
    def __init__(self, got: list[Any], event: threading.Event, want: int) -> None:
        super().__init__()
        self.got, self.event, self.want = got, event, want

    def on_receive(self, message: Any) -> None:
        self.got.append(message)
        if len(self.got) >= self.want:
            self.event.set()


def test_manual_clock_fires_exactly_what_advance_makes_due() -> None:
    clock = actors.ManualClock(start=0.0)
    got: list[Any] = []
    scheduler = SchedulerActor.start(clock)
    recorder = Recorder.start(got, threading.Event(), 99)
    try:
        for timer_id, due in [(1, 10.0), (2, 5.0), (3, 20.0)]:
            scheduler.tell(Schedule(timer_id, due, recorder, f"t{timer_id}"))
        scheduler.tell(Cancel(3))
        assert scheduler.ask(Tick()) == 0
        clock.advance(5.0)
        assert scheduler.ask(Tick()) in (0, 1)  # the driver thread may have ticked first
        recorder.ask("sync")
        assert got[:1] == ["t2"]
        clock.advance(100.0)
        scheduler.ask(Tick())
        recorder.ask("sync")
        assert [g for g in got if g != "sync"] == ["t2", "t1"]  # t3 was cancelled
        assert scheduler.ask(NextDue()) is None
    finally:
        scheduler.stop()
        recorder.stop()


def test_system_clock_driver_fires_without_being_ticked() -> None:
    clock = actors.SystemClock()
    done = threading.Event()
    got: list[Any] = []
    scheduler = SchedulerActor.start(clock)
    recorder = Recorder.start(got, done, 2)
    try:
        now = clock.now()
        scheduler.tell(Schedule(1, now + 0.05, recorder, "later"))
        scheduler.tell(Schedule(2, now, recorder, "now"))
        assert done.wait(5)  # the driver sleeps until each deadline, then ticks
        assert got == ["now", "later"]
    finally:
        scheduler.stop()
        recorder.stop()


def test_stopping_the_scheduler_stops_its_driver_thread() -> None:
    scheduler = SchedulerActor.start(actors.SystemClock())
    scheduler.stop()
    assert not [t for t in threading.enumerate() if t.name == "actors-timer-driver"]

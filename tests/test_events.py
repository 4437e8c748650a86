"""Refresh events reach callables (on a library thread) and actors (as messages)."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

import actors
from actors.testing import FakeFeishu, Reply
from tests.conftest import SystemFactory


def test_callables_get_refreshed_and_failed_events_without_token_values(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = make_system(app, max_attempts=2)
    events: list[actors.TokenRefreshed | actors.RefreshFailed] = []
    threads: set[str] = set()

    def on_event(event: object) -> None:
        threads.add(threading.current_thread().name)
        assert isinstance(event, actors.TokenRefreshed | actors.RefreshFailed)
        events.append(event)

    system.subscribe(on_event)
    server.script("tenant", Reply.http(502))
    future = system.proxy.get_token()
    system.settle()
    clock.advance(5)
    system.settle()
    token = future.get(timeout=5)
    failed, refreshed = events
    assert isinstance(failed, actors.RefreshFailed)
    assert failed.will_retry
    assert isinstance(failed.error, actors.UpstreamError)
    assert isinstance(refreshed, actors.TokenRefreshed)
    assert (refreshed.app_id, refreshed.kind, refreshed.cause) == ("cli_test", "tenant", "miss")
    assert refreshed.expires_at == pytest.approx(clock.now() - 5 + 7200, abs=6)
    assert token not in repr(events)
    assert threads == {"actors-events"}  # never the TokenActor's thread


def test_actors_get_events_as_messages_and_unsubscribe_stops_them(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    got: list[Any] = []
    arrived = threading.Event()

    class Dashboard(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            got.append(message)
            arrived.set()

    dashboard = Dashboard.start()
    try:
        unsubscribe = system.subscribe(dashboard)
        token = system.proxy.get_token().get(timeout=5)
        assert arrived.wait(5)
        unsubscribe()
        system.proxy.invalidate(token).get(timeout=5)
        system.settle()
        dashboard.ask("sync")
    finally:
        dashboard.stop()
    refreshed = [g for g in got if isinstance(g, actors.TokenRefreshed)]
    assert [e.cause for e in refreshed] == ["miss"]  # nothing after unsubscribe


def test_a_failing_subscriber_does_not_stop_the_others(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    seen: list[str] = []

    def broken(event: object) -> None:
        raise RuntimeError("subscriber bug")

    system.subscribe(broken)
    system.subscribe(lambda event: seen.append(type(event).__name__))
    system.proxy.get_token().get(timeout=5)
    system.settle()
    assert seen == ["TokenRefreshed"]


def test_subscribe_rejects_what_it_cannot_deliver_to(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    with pytest.raises(TypeError, match="callable or a pykka ActorRef"):
        system.subscribe("dashboard")  # type: ignore[arg-type]


def test_stop_called_from_a_subscriber_still_resolves_everything(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    from tests.conftest import our_threads

    system = make_system(app)
    stopped = threading.Event()

    def stop_on_first_event(event: object) -> None:
        system.stop()
        stopped.set()

    system.subscribe(stop_on_first_event)
    assert system.proxy.get_token().get(timeout=5)
    assert stopped.wait(5)
    with pytest.raises(actors.SystemStoppedError):
        system.proxy.get_token().get(timeout=5)
    assert not [t for t in our_threads() if t.startswith(("TokenActor", "actors-fetch"))]

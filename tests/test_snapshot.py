"""Fast reads: hits answered from the TokenActor's published snapshot, same rules as the actor."""

from __future__ import annotations

import pykka
import pytest

import actors
from actors._config import TokenKind
from actors._snapshot import ReadSnapshot
from actors.testing import FakeFeishu, Reply

from .conftest import APP_ID, SECRET, SystemFactory

KEY = actors.TokenKey("https://x", "cli", TokenKind.TENANT)


def test_lookup_serves_only_until_the_safety_margin_and_counts_hits() -> None:
    snapshot = ReadSnapshot()
    clock = actors.ManualClock()
    assert snapshot.lookup(KEY, 0.0, clock) is None
    snapshot.publish(KEY, "t-abc", 100.0, refreshing=False)
    assert snapshot.lookup(KEY, 99.9, clock) == "t-abc"
    assert snapshot.lookup(KEY, 100.0, clock) is None
    snapshot.publish(KEY, "t-abc", 100.0, refreshing=True)
    assert snapshot.lookup(KEY, 50.0, clock) == "t-abc"
    assert snapshot.hits() == {("cli", TokenKind.TENANT): 2}
    assert snapshot.stale_hits() == 1
    assert snapshot.reads[KEY] == 50.0
    snapshot.publish(KEY, None, 0.0, refreshing=False)
    assert snapshot.lookup(KEY, 1.0, clock) is None
    assert snapshot.latency().count == 2


@pytest.fixture
def vapp(vserver: FakeFeishu) -> actors.AppConfig:
    return actors.AppConfig(APP_ID, SECRET, base_url=vserver.base_url)


def test_a_fast_hit_is_an_already_resolved_future_counted_as_a_hit(
    make_system: SystemFactory, vapp: actors.AppConfig
) -> None:
    system = make_system(vapp)
    token = system.proxy.get_token().get(timeout=5)
    future = system.proxy.get_token()
    assert future.get(timeout=0) == token  # no mailbox round trip to wait for
    metrics = system.metrics()
    assert (metrics.hits, metrics.misses) == (1, 1)
    assert metrics.by_app_kind[APP_ID, "tenant"].hits == 1


def test_fast_hits_during_a_failing_refresh_count_as_stale_served(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(vapp, jitter=0.0, retry_base=10.0)
    token = system.proxy.get_token().get(timeout=5)
    vserver.script("tenant", Reply.http(503), Reply.http(503))
    clock.advance(7200 - 600)
    system.settle()
    assert system.proxy.get_token().get(timeout=0) == token
    assert system.metrics().stale_served == 1


def test_keys_read_only_through_the_snapshot_are_not_evicted_as_idle(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(vapp, idle_ttl=3600.0)
    system.proxy.get_token().get(timeout=5)
    for _ in range(24 * 6):  # a day, one fast read every 10 virtual minutes
        clock.advance(600)
        system.settle()
        system.proxy.get_token().get(timeout=5)
    metrics = system.metrics()
    assert metrics.idle_evictions == 0
    assert metrics.misses == 1


def test_mailbox_only_systems_publish_nothing(
    make_system: SystemFactory, vapp: actors.AppConfig
) -> None:
    system = make_system(vapp, fast_reads=False)
    token = system.proxy.get_token().get(timeout=5)
    assert system.proxy.get_token().get(timeout=5) == token
    assert system.metrics().hits == 1


def test_a_resolved_future_behaves_like_a_pykka_future() -> None:
    import queue

    from actors._waiters import resolved_future

    future = resolved_future("t-abc")
    assert isinstance(future, pykka.ThreadingFuture)
    assert future.get(timeout=0) == "t-abc"
    assert future.get() == "t-abc"
    assert future.map(str.upper).get(timeout=1) == "T-ABC"
    assert future.join(resolved_future("t-def")).get(timeout=1) == ["t-abc", "t-def"]
    with pytest.raises(queue.Full):
        future.set("again")


def test_hits_from_many_threads_are_all_counted(
    make_system: SystemFactory, vapp: actors.AppConfig
) -> None:
    import threading

    system = make_system(vapp)
    system.proxy.get_token().get(timeout=5)
    barrier = threading.Barrier(8)

    def reader() -> None:
        barrier.wait()
        for _ in range(1000):
            system.proxy.get_token().get(timeout=5)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics = system.metrics()
    assert (metrics.hits, metrics.misses) == (8000, 1)
    assert metrics.get_latency.count == 8001

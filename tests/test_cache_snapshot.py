"""Fast reads: hits answered from the TokenActor's published snapshot, same rules as the actor."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pykka
import pytest
from loguru import logger

import actors
from actors._cache import CallerStats, ReadSnapshot
from actors._config import TokenKey, TokenKind
from tests.conftest import APP_ID, SystemFactory

if TYPE_CHECKING:
    import loguru

KEY = TokenKey("https://x", "cli", TokenKind.TENANT)


def token_at(snapshot: ReadSnapshot, now: float, clock: actors.ManualClock) -> str | None:
    published = snapshot.lookup(KEY, now, clock.now)
    return published.token if published is not None else None


def test_lookup_serves_only_until_the_safety_margin_and_counts_hits() -> None:
    stats = CallerStats()
    snapshot = ReadSnapshot(stats)
    clock = actors.ManualClock()
    assert token_at(snapshot, 0.0, clock) is None
    snapshot.publish(KEY, "t-abc", 100.0, refreshing=False)
    assert token_at(snapshot, 99.9, clock) == "t-abc"
    assert token_at(snapshot, 100.0, clock) is None
    snapshot.publish(KEY, "t-abc", 100.0, refreshing=True)
    assert token_at(snapshot, 50.0, clock) == "t-abc"
    assert snapshot.hits() == {("cli", TokenKind.TENANT): 2}
    assert snapshot.stale_hits() == 1
    assert snapshot.last_read(KEY) == 50.0
    snapshot.publish(KEY, None, 0.0, refreshing=False)
    assert token_at(snapshot, 1.0, clock) is None
    # The first hit of the key was timed; the sample stands for exactly the hits counted.
    assert stats.latency(fast_hits=0).count == 0
    assert stats.latency(fast_hits=2).count == 2


def test_every_hit_on_one_published_token_shares_one_resolved_future() -> None:
    snapshot = ReadSnapshot(CallerStats())
    snapshot.publish(KEY, "t-abc", 100.0, refreshing=False)
    first = snapshot.lookup(KEY, 1.0, time.monotonic)
    snapshot.publish(KEY, "t-abc", 100.0, refreshing=True)  # same token, refresh under way
    second = snapshot.lookup(KEY, 2.0, time.monotonic)
    assert first is not None and second is not None
    assert first.future is second.future
    assert first.future.get(timeout=0) == "t-abc"
    snapshot.publish(KEY, "t-new", 200.0, refreshing=False)
    third = snapshot.lookup(KEY, 3.0, time.monotonic)
    assert third is not None and third.future is not first.future
    assert third.future.get() == "t-new"


def test_hit_counts_are_exact_under_concurrent_readers() -> None:
    stats = CallerStats()
    snapshot = ReadSnapshot(stats)
    snapshot.publish(KEY, "t-abc", 1e18, refreshing=True)
    per_thread, threads = 20_000, 8
    barrier = threading.Barrier(threads)

    def reader() -> None:
        barrier.wait()
        for i in range(per_thread):
            snapshot.lookup(KEY, float(i), time.monotonic)

    workers = [threading.Thread(target=reader) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert snapshot.hits() == {("cli", TokenKind.TENANT): per_thread * threads}
    assert snapshot.stale_hits() == per_thread * threads
    latency = stats.latency(fast_hits=per_thread * threads)
    assert latency.count == per_thread * threads  # n is the gets described, not the samples' weight


def test_a_withdrawn_key_keeps_its_counts() -> None:
    snapshot = ReadSnapshot(CallerStats())
    snapshot.publish(KEY, "t-abc", 100.0, refreshing=False)
    for now in range(3):
        snapshot.lookup(KEY, float(now), time.monotonic)
    snapshot.withdraw(KEY)
    assert KEY not in snapshot.cells
    assert snapshot.hits() == {("cli", TokenKind.TENANT): 3}


def test_a_fast_hit_is_an_already_resolved_future_counted_as_a_hit(
    make_system: SystemFactory, vapp: actors.AppConfig
) -> None:
    system = make_system(vapp)
    token = system.proxy.get_token().get(timeout=5)
    future = system.proxy.get_token()
    assert isinstance(future, pykka.Future)
    assert future.get(timeout=0) == token  # no mailbox round trip to wait for
    metrics = system.metrics()
    assert (metrics.hits, metrics.misses) == (1, 1)
    assert metrics.by_app_kind[APP_ID, "tenant"].hits == 1


class ActorHold:
    """A loguru sink that parks the TokenActor's thread on its next TRACE record (the actor
    traces every get that misses) until :meth:`release`: the actor is busy, its mailbox waits."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self._released = threading.Event()
        self._armed = True

    def __call__(self, message: loguru.Message) -> None:
        record = message.record
        if (
            self._armed
            and record["level"].name == "TRACE"
            and record["thread"].name.startswith("TokenActor")
        ):
            self._armed = False
            self.holding.set()
            self._released.wait(timeout=30)  # only bounds a hang if the test fails first

    def release(self) -> None:
        self._released.set()


@pytest.mark.parametrize(
    ("fast_reads", "answered_while_busy"),
    [(True, True), (False, False)],
    ids=["fast-reads", "mailbox-only"],
)
def test_only_fast_reads_answer_a_hit_while_the_actor_is_busy(
    make_system: SystemFactory, vapp: actors.AppConfig, fast_reads: bool, answered_while_busy: bool
) -> None:
    system = make_system(vapp, fast_reads=fast_reads)
    token = system.proxy.get_token().get(timeout=5)
    hold = ActorHold()
    sink = logger.add(hold, level="TRACE", filter="actors")
    logger.enable("actors")
    try:
        system.proxy.get_token(actors.TokenKind.APP)  # a miss: the actor traces it and is held
        assert hold.holding.wait(5)
        hit = system.proxy.get_token()  # the tenant token is cached and valid
        try:
            hit.get(timeout=0)
        except pykka.Timeout:
            answered = False  # queued behind the held actor: no snapshot answered it
        else:
            answered = True
        assert answered is answered_while_busy
    finally:
        hold.release()
        logger.disable("actors")
        logger.remove(sink)
    assert hit.get(timeout=5) == token
    metrics = system.metrics()
    assert (metrics.misses, metrics.hits) == (2, 1)


def test_hits_from_many_threads_are_all_counted(
    make_system: SystemFactory, vapp: actors.AppConfig
) -> None:
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

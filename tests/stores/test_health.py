"""What a RedisStore tells about itself: cheaply, within its operation timeout whatever Redis
does, and never a secret."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis

import actors
from actors.stores import RedisStore, StoreHealth
from actors.stores import _layout as layout
from tests.conftest import MARKET_ID, MARKET_SECRET, our_threads
from tests.redis_server import RedisServer, free_port
from tests.stores.conftest import PREFIX, wait_for

MARKET = actors.AppConfig(
    MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url="http://127.0.0.1:9"
)
OP_TIMEOUT = 0.3
# What a health check may take beyond the operation timeout on a loaded machine (the PING
# itself is abandoned at the timeout).
SLACK = 0.5


def timed_health(store: RedisStore) -> tuple[StoreHealth, float]:
    started = time.monotonic()
    health = store.health()
    return health, time.monotonic() - started


def test_a_store_on_a_live_redis_is_reachable_with_nothing_to_report(
    redis_server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    store = stores()

    assert store.health() == StoreHealth(
        where=f"redis://127.0.0.1:{redis_server.port}/0",
        reachable=True,
        breaker_open=False,
        faults={},
        last_error=None,
    )


def test_health_counts_the_unusable_values_found_by_fault(
    client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    key = layout.ticket_key(PREFIX, MARKET)
    store = stores()
    for raw in (b"\xff garbage", b"[]", json.dumps({"v": 2, "ticket": "t\r\n"})):
        client.set(key, raw, px=60_000)
        assert store.get_ticket(MARKET) is None

    health = store.health()

    assert health.faults == {"not a JSON object": 1, "unknown format": 1, "not a ticket": 1}
    assert health.reachable and health.last_error is None  # a bad value is not Redis failing


def test_a_killed_redis_is_unreachable_at_once_and_reachable_again_once_restarted(
    redis_server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    store = stores(op_timeout=OP_TIMEOUT)
    assert store.health().reachable
    redis_server.kill()

    health, took = timed_health(store)

    assert not health.reachable and not health.breaker_open  # a check never opens the breaker
    assert health.last_error == "ConnectionError"
    assert took < OP_TIMEOUT + SLACK, took
    redis_server.start()
    assert store.health().reachable
    assert store.health().last_error == "ConnectionError"  # the last one seen, for the record


def test_a_paused_redis_is_unreachable_within_the_operation_timeout(
    redis_server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    store = stores(op_timeout=OP_TIMEOUT)
    assert store.health().reachable
    redis_server.pause()
    try:
        for _ in range(3):  # the first PING is still unanswered: the later checks share it
            health, took = timed_health(store)
            assert not health.reachable and not health.breaker_open
            assert took < OP_TIMEOUT + SLACK, took
        assert sum(name == "actors-redis-probe" for name in our_threads()) <= 1
    finally:
        redis_server.resume()
    wait_for(lambda: store.health().reachable, 5, "a PING answered again")
    store.close()
    assert our_threads() == []


def test_an_open_breaker_is_unreachable_without_asking_redis(
    stores: Callable[..., RedisStore],
) -> None:
    # A port where nothing listens, behind an address with a password.
    store = stores(
        f"redis://:pa55word@127.0.0.1:{free_port()}/0", failure_threshold=1, cooldown=60.0
    )
    store.serves(MARKET)
    assert store.put_ticket(MARKET, "ticket-1") is False  # fails: the breaker opens

    health, took = timed_health(store)

    assert health.breaker_open and not health.reachable
    assert health.last_error == "ConnectionError"
    assert took < SLACK, took
    assert "pa55word" not in repr(health) and "pa55word" not in health.where
    assert health.where.startswith("redis://127.0.0.1:")


def test_a_closed_store_is_unreachable(stores: Callable[..., RedisStore]) -> None:
    store = stores()
    store.close()

    assert not store.health().reachable


def test_a_health_snapshot_cannot_be_changed() -> None:
    counts = {"too large": 1}
    health = StoreHealth(
        where="redis://h/0", reachable=True, breaker_open=False, faults=counts, last_error=None
    )
    counts["too large"] = 2

    assert health.faults == {"too large": 1}
    try:
        health.faults["too large"] = 3  # type: ignore[index]
    except TypeError:
        pass
    assert health.faults == {"too large": 1}

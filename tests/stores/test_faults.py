"""The store's fault matrix: what Redis, or anyone who can write to it, may hand a process.

A store is a cache, not an authority. Each row puts one kind of bad state into a real Redis;
every row expects the same: the process serves a token from its own upstream (never the bad
value), keeps the shared tier in service for every other key (no breaker opened), overwrites the
bad value so the next process is served from Redis again, and says so once at WARNING without
the value's bytes.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis

import actors
from actors.stores import RedisStore
from actors.stores import _layout as layout
from actors.testing import FakeFeishu, FunctionSource, store_available, wait_listening
from actors.testing._stores import noticed_count, store_faults
from tests.conftest import APP_ID, MARKET_ID, MARKET_SECRET, SECRET
from tests.redis_server import RedisServer, Relay, require_redis_binary
from tests.stores.conftest import (
    PREFIX,
    Fleet,
    counting_source,
    fleet_config,
    text_keys,
    wait_for,
)

OTHER_ID, OTHER_SECRET = "cli_other_app", "other-app-secret-value"
BASE_URL = "http://127.0.0.1:9"
APP = actors.AppConfig(APP_ID, SECRET, base_url=BASE_URL)
OTHER = actors.AppConfig(OTHER_ID, OTHER_SECRET, base_url=BASE_URL)
HOUR_MS = 3_600_000


def never_called() -> FunctionSource:
    return FunctionSource(lambda _r: AssertionError("the shared value should have been served"))


def seed(
    stores: Callable[..., RedisStore], client: redis.Redis
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each app's token written to Redis by a process of its own: app id -> (value key, value)."""
    system = actors.TokenSystem.start(
        [APP, OTHER], store=stores(), source=counting_source(name="seeded")
    )
    try:
        for app in (APP, OTHER):
            system.proxy.get_token(app_id=app.app_id).get(timeout=5)
    finally:
        system.stop()
    found = {}
    for app in (APP, OTHER):
        (key,) = text_keys(client, f"{PREFIX}{{app:{app.app_id}*:tenant:-:tenant")
        found[app.app_id] = (key, json.loads(client.get(key) or b"{}"))
    return found


Mutation = Callable[[redis.Redis, str, dict[str, Any], str], None]


def with_token(token: object, px: int | None = HOUR_MS) -> Mutation:
    def mutate(client: redis.Redis, key: str, value: dict[str, Any], _other: str) -> None:
        client.set(key, json.dumps({**value, "token": token}), px=px)

    return mutate


def raw(data: bytes, px: int | None = HOUR_MS) -> Mutation:
    def mutate(client: redis.Redis, key: str, _value: dict[str, Any], _other: str) -> None:
        client.set(key, data, px=px)

    return mutate


def thirty_days(client: redis.Redis, key: str, value: dict[str, Any], _other: str) -> None:
    client.set(key, json.dumps(value), px=30 * 24 * HOUR_MS)


def no_ttl_issued_in_the_future(
    client: redis.Redis, key: str, value: dict[str, Any], _other: str
) -> None:
    client.set(key, json.dumps({**value, "issued_ms": 10**15}))


def another_apps_value(client: redis.Redis, key: str, _value: dict[str, Any], other: str) -> None:
    client.set(key, client.get(other) or b"", px=client.pttl(other))


def huge_numbers(client: redis.Redis, key: str, value: dict[str, Any], _other: str) -> None:
    text = json.dumps(value)[:-1] + ', "v": 1e400, "ver": 1e400, "issued_ms": 1e400}'
    client.set(key, text, px=HOUR_MS)


def a_hash(client: redis.Redis, key: str, value: dict[str, Any], _other: str) -> None:
    client.delete(key)
    client.hset(key, "token", str(value["token"]))


def lease_of_another_type(client: redis.Redis, key: str, _value: dict[str, Any], _o: str) -> None:
    client.delete(key)
    client.rpush(key + ":lease", "not-a-lease")


BAD_VALUES: dict[str, Mutation] = {
    "a 30-day lifetime": thirty_days,
    "no lifetime and an issue time in the future": no_ttl_issued_in_the_future,
    "a 4 MiB token": with_token("t-" + "x" * (4 << 20)),
    "a token with CR/LF (header injection)": with_token("t-abc\r\nX-Injected: yes"),
    "a token with a control character": with_token("t-abc\x00def"),
    "a token with a space": with_token("t-abc def"),
    "a token outside ASCII": with_token("t-abc\u00e9"),
    "an empty token": with_token(""),
    "a token that is a number": with_token(12345),
    "another app's token": another_apps_value,
    "bytes that are not JSON": raw(b"\xff\xfe not json"),
    "JSON of another shape": raw(b"[1, 2, 3]"),
    "nested JSON deeper than any parser's stack": raw(b"[" * 200_000 + b"]" * 200_000),
    "numbers too large for a float": huge_numbers,
    "a value of another Redis type (WRONGTYPE)": a_hash,
    "a lease of another Redis type": lease_of_another_type,
}


@pytest.mark.parametrize("mutate", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_bad_shared_value_is_never_served_and_is_overwritten_without_stopping_service(
    mutate: Mutation,
    client: redis.Redis,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
    store_warnings: list[str],
) -> None:
    values = seed(stores, client)
    key, value = values[APP_ID]
    mutate(client, key, value, values[OTHER_ID][0])
    bad = client.get(key) if client.type(key) == b"string" else None
    return_value = cast(bytes | None, bad)
    store = stores(failure_threshold=1)
    systems.append(actors.TokenSystem.start(APP, store=store, source=counting_source(name="fresh")))

    token = systems[0].proxy.get_token().get(timeout=5)

    assert token == "t-000001-fresh"
    assert store_available(store)  # a bad key is that key's problem, not the store's
    assert sum(store_faults(store).values()) >= 1  # counted
    assert json.loads(client.get(key) or b"{}")["token"] == token  # overwritten
    assert 0 < client.pttl(key) <= 7_200_000
    # The next process is served from Redis again.
    later = actors.TokenSystem.start(APP, store=stores(), source=never_called())
    systems.append(later)
    assert later.proxy.get_token().get(timeout=5) == token
    # Said once, without the value's bytes.
    assert len(store_warnings) == 1, store_warnings
    assert "unusable" in store_warnings[0]
    bad_token = str(value["token"])
    assert all(bad_token not in line and "X-Injected" not in line for line in store_warnings)
    if return_value:
        assert all(return_value.decode("latin-1")[:40] not in line for line in store_warnings)


def test_one_apps_key_of_the_wrong_type_leaves_the_other_apps_shared_tokens_alone(
    client: redis.Redis,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    values = seed(stores, client)
    other_key, _ = values[OTHER_ID]
    client.delete(other_key)
    client.hset(other_key, "oops", "a hash")
    # One store for both apps, opened by the first failure it would count.
    store = stores(failure_threshold=1)
    source = counting_source(name="fresh")
    systems.append(actors.TokenSystem.start([APP, OTHER], store=store, source=source))

    other = systems[0].proxy.get_token(app_id=OTHER_ID).get(timeout=5)
    mine = systems[0].proxy.get_token(app_id=APP_ID).get(timeout=5)

    assert other == "t-000001-fresh"
    assert mine == values[APP_ID][1]["token"]  # still from Redis: one upstream request in all
    assert len(source.requests) == 1 and store_available(store)


# --- app_tickets ---------------------------------------------------------------------------------

MARKET = actors.AppConfig(
    MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=BASE_URL
)

BAD_TICKETS: dict[str, Callable[[redis.Redis, str], object]] = {
    "a ticket with CR/LF": lambda c, k: c.set(k, _ticket(c, k, "tk\r\nX-Injected: yes")),
    "a 4 MiB ticket": lambda c, k: c.set(k, _ticket(c, k, "t" * (4 << 20)), px=HOUR_MS),
    "a ticket that lives a month": lambda c, k: c.set(k, c.get(k) or b"", px=720 * HOUR_MS),
    "not JSON": lambda c, k: c.set(k, b"\xff garbage", px=HOUR_MS),
    "a hash": lambda c, k: (c.delete(k), c.hset(k, "ticket", "tk")),
}


def _ticket(client: redis.Redis, key: str, ticket: str) -> str:
    return json.dumps({**json.loads(client.get(key) or b"{}"), "ticket": ticket})


@pytest.mark.parametrize("mutate", BAD_TICKETS.values(), ids=BAD_TICKETS.keys())
def test_a_bad_shared_app_ticket_is_never_handed_out_and_feishu_is_asked_again(
    mutate: Callable[[redis.Redis, str], object],
    client: redis.Redis,
    stores: Callable[..., RedisStore],
    store_warnings: list[str],
) -> None:
    assert stores().put_ticket(MARKET, "ticket-good-1")
    (key,) = text_keys(client, "*:ticket")
    mutate(client, key)
    store = stores(failure_threshold=1, ticket_poll=0.2)
    source = FunctionSource(lambda _r: actors.Grant("t-x", 60.0))
    shared = store.wrap(source, actors.RefreshPolicy())

    assert shared.resend_ticket(MARKET) is None  # asked Feishu to push one, none came
    assert source.resends == [MARKET_ID] and store_available(store)
    assert len(store_warnings) == 1 and "unusable" in store_warnings[0]
    assert "X-Injected" not in store_warnings[0]


def test_a_ticket_that_cannot_be_shared_serves_this_process_only(
    client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    store = stores()

    assert store.put_ticket(MARKET, "tk\r\nX-Injected: yes") is False
    assert text_keys(client) == []


# --- notices -------------------------------------------------------------------------------------


def _notice(**fields: object) -> bytes:
    body = {"v": 1, "digest": "0" * 64, "origin": "elsewhere", "at_ms": 1, "ver": 1}
    return json.dumps({**body, **fields}).encode()


BAD_NOTICES: dict[str, bytes] = {
    "numbers too large for a float": _notice()[:-1] + b', "at_ms": 1e400, "ver": 1e400}',
    "NaN": _notice(at_ms=math.nan, ver=math.nan),
    "strings for numbers": _notice(at_ms="soon", ver="1"),
    "a list for a digest": _notice(digest=[1, 2]),
    "an integer of 5000 digits": _notice()[:-1] + b', "ver": ' + b"9" * 5000 + b"}",
    "not JSON": b"\xff\xfe",
    "JSON of another shape": b"[1, 2, 3]",
    "nested JSON": b"[" * 100_000 + b"]" * 100_000,
    "a megabyte": b'"' + b"x" * (1 << 20) + b'"',
}


def listening_pair(
    stores: Callable[..., RedisStore], systems: list[actors.TokenSystem]
) -> list[RedisStore]:
    """Two systems (appended to ``systems``) on one source, each with a listening store."""
    source = counting_source()
    made = [stores() for _ in range(2)]
    systems.extend(actors.TokenSystem.start(APP, store=s, source=source) for s in made)
    assert all(wait_listening(s, timeout=5) for s in made)
    return made


def test_malformed_notices_never_stop_real_invalidations_from_arriving(
    client: redis.Redis,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    listening_pair(stores, systems)
    channel = layout.channel(PREFIX)
    arrived = 0
    for round_ in range(2):
        for notice in BAD_NOTICES.values():
            held = systems[1].proxy.get_token().get(timeout=5)
            assert systems[0].proxy.get_token().get(timeout=5) == held
            client.publish(channel, notice)
            systems[0].proxy.invalidate(held).get(timeout=5)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if systems[1].proxy.get_token().get(timeout=5) != held:
                    arrived += 1
                    break
                time.sleep(0.005)
            else:  # lost: the next round starts from one token again
                systems[1].proxy.invalidate(held).get(timeout=5)
                systems[0].settle()
        assert round_ == 1 or arrived == len(BAD_NOTICES)
    assert arrived == 2 * len(BAD_NOTICES)


FLOOD = 20_000


def test_a_flood_of_notices_is_bounded_and_a_real_invalidation_still_arrives_at_once(
    client: redis.Redis,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    made = listening_pair(stores, systems)
    held = systems[1].proxy.get_token().get(timeout=5)
    assert systems[0].proxy.get_token().get(timeout=5) == held
    channel = layout.channel(PREFIX)
    pipe = client.pipeline(transaction=False)
    for _ in range(FLOOD):
        body = {"v": 2, "digest": secrets.token_hex(32), "origin": "flood", "ver": 1}
        body["at_ms"] = 1
        pipe.publish(channel, json.dumps(body))
    pipe.execute()

    sent = time.monotonic()
    systems[0].proxy.invalidate(held).get(timeout=5)
    got = threading.Event()

    def changed() -> bool:
        if systems[1].proxy.get_token().get(timeout=5) != held:
            got.set()
        return got.is_set()

    wait_for(changed, 10.0, "the real invalidation behind the flood")
    took = time.monotonic() - sent

    assert took < 3.0, took  # about 0.7 s here; tens of seconds when processing was quadratic
    assert noticed_count(made[1]) <= 4096
    assert client.pubsub_numsub(channel)[0][1] == 2  # nobody fell off the channel


# --- failover ------------------------------------------------------------------------------------

SKEW_MS = 60_000  # the replica's clock runs a minute behind the primary's


@pytest.fixture
def failover() -> Iterator[tuple[RedisServer, RedisServer, Relay]]:
    """A primary, a replica of it whose clock is slower, and the address clients know."""
    binary = require_redis_binary()
    primary = RedisServer(binary)
    primary.start()
    replica = RedisServer(binary, clock_offset_ms=-SKEW_MS, replica_of=primary.port)
    replica.start()
    relay = Relay(primary.port)
    yield primary, replica, relay
    relay.close()
    primary.close()
    replica.close()


# Tokens live 8 s and the fake renews them once less than 5 s is left; the processes prewarm
# 3.5 s after each token is issued (halfway to the margin), so refreshes come every 3.5 s.
LIFETIME, WINDOW = 8.0, 5.0
POLICY: dict[str, Any] = {
    "safety_margin": 1.0,
    "prewarm_lead": 5.0,
    "jitter": 0.0,
    "request_timeout": (1.0, 2.0),
}
FAILOVER_PROCESSES = 4


def test_after_failover_to_a_redis_whose_clock_is_slower_each_refresh_is_still_one_request(
    failover: tuple[RedisServer, RedisServer, Relay], fleet: Callable[[int], Fleet]
) -> None:
    primary, replica, relay = failover
    with (
        redis.Redis(port=primary.port, socket_timeout=5) as old,
        redis.Redis(port=replica.port, socket_timeout=5) as new,
        FakeFeishu(token_lifetime=LIFETIME, refresh_window=WINDOW) as server,
    ):
        assert int(old.time()[0]) - int(new.time()[0]) >= SKEW_MS / 1000 - 5
        server.add_app(APP_ID, SECRET)
        processes = fleet(FAILOVER_PROCESSES)
        config = fleet_config(server, relay, **POLICY)
        assert processes.call_all("start", config) == ["ok"] * FAILOVER_PROCESSES
        assert len(set(processes.call_all("get"))) == 1
        # Fail over right after a refresh, with every write on the replica: the next refresh
        # is seconds away, so no request is lost to the switch itself.
        wait_for(lambda: server.count("tenant") == 2, 10, "the first refresh")
        before = set(processes.call_all("settled_token"))
        assert len(before) == 1
        assert old.wait(1, 2000) == 1
        relay.switch(replica.port)
        new.replicaof("NO", "ONE")
        primary.kill()
        requests = server.count("tenant")

        results = processes.call_all("hammer", 4, 2.5 * 3.5, 0.01, timeout=60)

        after = set(processes.call_all("settled_token"))
        tokens = after.union(*(r["tokens"] for r in results)) - before
        assert [r["errors"] for r in results] == [[]] * FAILOVER_PROCESSES
        # At least one refresh on the new primary (a loaded machine may fire the second late);
        # before the fix each one cost every process a request.
        assert len(tokens) >= 1
        assert server.count("tenant") - requests == len(tokens)  # one request per refresh
        processes.call_all("stop")

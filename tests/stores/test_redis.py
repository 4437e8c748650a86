"""The shared token tier on a real Redis (no mocks): format, lease, CAS, processes, failures."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple, cast

import pytest
import redis

import actors
from actors.stores import RedisStore
from actors.stores import _base as base
from actors.stores import _layout as layout
from actors.stores._redis import DEFAULT_LEASE
from actors.testing import FakeFeishu, FunctionSource, store_available, wait_listening
from actors.testing._stores import store_faults
from tests.conftest import APP_ID, MARKET_ID, MARKET_SECRET, SECRET, our_threads
from tests.redis_server import (
    RedisServer,
    blocking_holder,
    free_port,
    paused_holder,
    stopped,
)
from tests.stores.conftest import (
    PREFIX,
    SPAWN,
    Fleet,
    counting_source,
    fleet_config,
    text_keys,
    wait_for,
)

APP = actors.AppConfig(APP_ID, SECRET, base_url="http://127.0.0.1:9")
KEYS = layout.Keys.of(PREFIX, APP, actors.TokenKind.TENANT, None)
MARKET = actors.AppConfig(
    MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=APP.base_url
)


def request(**fields: Any) -> actors.TokenRequest:
    fields.setdefault("app", APP)
    fields.setdefault("kind", actors.TokenKind.TENANT)
    return actors.TokenRequest(**fields)


def holds(system: actors.TokenSystem, token: str) -> bool:
    held: str = system.proxy.get_token().get(timeout=5)
    return held == token


def invalidated(system: actors.TokenSystem) -> bool:
    return system.metrics().invalidations == 1


# --- format, keys, lease, CAS ---------------------------------------------------------------------


def test_the_shared_value_is_versioned_json_with_redis_own_ttl(
    redis_server: RedisServer, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    source = FunctionSource.constant("t-shared-value-0001", 7200.0)
    shared = stores(redis_server.url).wrap(source, actors.RefreshPolicy())

    grant = shared.fetch(request())

    assert grant == actors.Grant("t-shared-value-0001", 7200.0)
    raw = client.get(KEYS.value)
    assert raw is not None
    value = json.loads(raw)
    # The owner ties the value to its key: under any other key it is refused.
    assert value == {"v": 2, "token": "t-shared-value-0001", "owner": KEYS.owner, "ver": 1}
    assert 7_190_000 < client.pttl(KEYS.value) <= 7_200_000
    assert client.get(KEYS.version) == b"1"
    assert client.exists(KEYS.lease) == 0  # released

    # Another process (another store) is answered from Redis, with Redis's remaining TTL.
    other = FunctionSource.constant("t-never-fetched-00", 7200.0)
    again = stores(redis_server.url).wrap(other, actors.RefreshPolicy()).fetch(request())
    assert again.token == "t-shared-value-0001" and 7190 < again.expire <= 7200
    assert len(source.requests) == 1 and other.requests == []


def test_keys_name_the_app_its_domain_and_a_digest_of_its_credentials_never_the_secret(
    redis_server: RedisServer, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    store = stores(redis_server.url)
    market = actors.AppConfig(
        MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=APP.base_url
    )
    shared = store.wrap(counting_source(), actors.RefreshPolicy())
    token = shared.fetch(request()).token
    shared.fetch(request(app=market, kind=actors.TokenKind.APP, app_ticket="ticket-1"))
    shared.fetch(request(app=market, tenant_key="tk{odd}:key", app_token="a-app-token"))
    shared.fetch(request(cause="invalidate", replaces=token))
    assert store.put_ticket(market, "ticket-1")

    mine = f"{PREFIX}{{app:{APP_ID}:127.0.0.1%3A9:{base.credentials_digest(APP)[:16]}}}"
    theirs = f"{PREFIX}{{app:{MARKET_ID}:127.0.0.1%3A9:{base.credentials_digest(market)[:16]}}}"
    keys = text_keys(client)
    assert f"{mine}:tenant:-:tenant" in keys and f"{mine}:tenant:-:tenant:version" in keys
    assert f"{theirs}:tenant:-:app" in keys
    assert f"{theirs}:tenant:tk%7Bodd%7D%3Akey:tenant" in keys
    assert f"{theirs}:ticket" in keys
    for key in keys:
        assert key.startswith((mine, theirs)) and key.count("{") == 1
        assert SECRET not in key and MARKET_SECRET not in key
        raw = client.get(key) or b""
        assert SECRET.encode() not in raw and MARKET_SECRET.encode() not in raw
    ticket = json.loads(client.get(f"{theirs}:ticket") or b"{}")
    assert ticket == {"v": 2, "ticket": "ticket-1", "owner": layout.owner(f"{theirs}:ticket")}
    assert 43_100_000 < client.pttl(f"{theirs}:ticket") <= 43_200_000
    # Another domain, or another secret, is another key.
    lark = actors.AppConfig(APP_ID, SECRET, base_url=actors.LARK)
    rotated = actors.AppConfig(APP_ID, SECRET + "-rotated", base_url=APP.base_url)
    tenant = actors.TokenKind.TENANT
    names = {layout.Keys.of(PREFIX, app, tenant, None).value for app in (APP, lark, rotated)}
    assert len(names) == 3
    assert all(SECRET not in name for name in names)


def test_the_same_app_id_on_another_domain_or_with_another_secret_is_never_served_its_token(
    redis_server: RedisServer,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    with FakeFeishu() as feishu, FakeFeishu() as lark:
        for server in (feishu, lark):
            server.add_app(APP_ID, SECRET)

        def token_of(app: actors.AppConfig) -> str:
            systems.append(actors.TokenSystem.start(app, store=stores(redis_server.url)))
            token: str = systems[-1].proxy.get_token().get(timeout=5)
            return token

        on_feishu = token_of(actors.AppConfig(APP_ID, SECRET, base_url=feishu.base_url))
        on_lark = token_of(actors.AppConfig(APP_ID, SECRET, base_url=lark.base_url))
        # A process with a wrong secret hears it from its own Feishu.
        with pytest.raises(actors.AuthError):
            token_of(actors.AppConfig(APP_ID, "not-the-app-secret", base_url=feishu.base_url))

        assert on_lark != on_feishu
        assert lark.valid_token(on_lark) and lark.count("tenant") == 1
        assert feishu.count("tenant") == 2  # the first token, and the refused wrong secret


def test_the_lease_is_exclusive_and_only_its_holder_releases_it(
    redis_server: RedisServer, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    store = stores(redis_server.url)
    options: dict[str, Any] = {"lease_ms": 5_000, "replaces": "", "min_ms": 0, "since": -1}

    first = store.acquire(KEYS, "holder-a", **options)
    second = store.acquire(KEYS, "holder-b", **options)

    assert first.kind == "lease" and second.kind == "wait"
    assert 0 < second.pttl_ms <= 5_000
    store.release(KEYS, "holder-b")  # not its lease: nothing happens
    assert client.get(KEYS.lease) == b"holder-a"
    store.release(KEYS, "holder-a")
    assert client.exists(KEYS.lease) == 0
    assert store.acquire(KEYS, "holder-b", **options).kind == "lease"


def test_writes_are_ordered_by_the_keys_version_and_a_late_writer_never_extends_a_token(
    redis_server: RedisServer, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    store = stores(redis_server.url)

    assert store.write(KEYS, "t-long", 100_000, 0)[0]  # version 1
    # A writer that took its lease before the stored value was written lost the race, however
    # long-lived its token: it saw version 0, the value is version 1.
    written, kept, pttl = store.write(KEYS, "t-stale-writer", 200_000, 0)
    assert (written, kept) == (False, "t-long") and 90_000 < pttl <= 100_000
    # A writer that saw the stored value fetched to replace it: it wins whatever lifetime Redis
    # reports for the stored one (after failover to a slower clock, each reads too long).
    assert store.write(KEYS, "t-newer", 50_000, 1)[0]
    # The same token is rewritten (a new version) with a shorter lifetime, never a longer one:
    # a writer that was paused past its lease cannot keep a token beyond its real expiry.
    assert store.write(KEYS, "t-newer", 40_000, 0)[0]
    written, kept, pttl = store.write(KEYS, "t-newer", 900_000, 0)
    assert written and kept == "t-newer" and 30_000 < pttl <= 40_000
    assert 30_000 < client.pttl(KEYS.value) <= 40_000
    assert json.loads(client.get(KEYS.value) or b"{}")["ver"] == 4
    assert client.get(KEYS.version) == b"4"


def test_a_value_that_is_the_replaced_token_or_within_the_margin_is_not_served(
    redis_server: RedisServer, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    policy = actors.RefreshPolicy(safety_margin=100.0, prewarm_lead=200.0)
    source = counting_source()
    shared = stores(redis_server.url).wrap(source, policy)
    store = stores(redis_server.url)
    store.write(KEYS, "t-held-by-caller", 7_200_000, 0)

    # A prewarm replacing the shared token goes upstream (under the lease).
    grant = shared.fetch(request(cause="prewarm", replaces="t-held-by-caller"))
    assert grant.token == "t-000001-shared-token" and len(source.requests) == 1

    value = {"v": 2, "token": "t-nearly-gone", "owner": KEYS.owner, "ver": 9}
    client.set(KEYS.value, json.dumps(value), px=100_300)
    assert shared.fetch(request()).token == "t-000002-shared-token"
    assert store_faults(store) == {}  # nearly gone is not unusable: nothing to report


# --- one upstream request -----------------------------------------------------------------------


def test_many_threads_of_many_systems_make_one_upstream_request(
    redis_server: RedisServer,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    source = counting_source(latency=0.2)  # slow enough for every system to find the lease taken
    for _ in range(4):
        systems.append(actors.TokenSystem.start(APP, store=stores(redis_server.url), source=source))
    barrier = threading.Barrier(32)

    def get(index: int) -> str:
        barrier.wait(5)
        token: str = systems[index % 4].proxy.get_token().get(timeout=10)
        return token

    with ThreadPoolExecutor(32) as pool:
        tokens = set(pool.map(get, range(32)))

    assert tokens == {"t-000001-shared-token"}
    assert len(source.requests) == 1


PROCESSES, THREADS = 4, 8
# The issue's figure: 8 processes x 16 threads on one key across token expiries.
EXPIRY_PROCESSES, EXPIRY_THREADS = 8, 16


def test_processes_make_one_upstream_request_per_refresh_across_expiries(
    redis_server: RedisServer, fleet: Callable[[int], Fleet]
) -> None:
    # Tokens live 4 s and are renewed in their last 3 s: 6.5 s of traffic spans two refreshes.
    with FakeFeishu(token_lifetime=4.0, refresh_window=3.0) as server:
        server.add_app(APP_ID, SECRET)
        processes = fleet(EXPIRY_PROCESSES)
        config = fleet_config(
            server,
            redis_server,
            safety_margin=0.5,
            prewarm_lead=1.2,
            request_timeout=(1.0, 2.0),
        )
        assert processes.call_all("start", config) == ["ok"] * EXPIRY_PROCESSES

        results = processes.call_all("hammer", EXPIRY_THREADS, 6.5, 0.005, timeout=60)

        # A refresh still in flight as the traffic stops is counted with the token it brings.
        settled = processes.call_all("settled_token")
        tokens = set(settled).union(*(r["tokens"] for r in results))
        assert [r["errors"] for r in results] == [[]] * EXPIRY_PROCESSES
        assert all(r["gets"] > 100 for r in results)
        assert len(tokens) >= 2  # the first token and at least one refresh (usually two)
        assert all(server.expires_at(token) is not None for token in tokens)
        # One upstream request per token, for EXPIRY_PROCESSES x EXPIRY_THREADS callers.
        assert server.count("tenant") == len(tokens)
        processes.call_all("stop")


def test_an_invalidation_reaches_every_process_within_a_second(
    redis_server: RedisServer, fleet: Callable[[int], Fleet]
) -> None:
    with FakeFeishu() as server:
        server.add_app(APP_ID, SECRET)
        processes = fleet(PROCESSES)
        assert processes.call_all("start", fleet_config(server, redis_server)) == ["ok"] * 4
        (old,) = set(processes.call_all("get"))
        server.rotate(APP_ID)  # the token is revoked upstream: the next request mints a new one

        for index in range(1, PROCESSES):
            processes.send(index, "watch", old, 5.0)
        assert [processes.recv(i) for i in range(1, PROCESSES)] == ["watching"] * 3
        sent = time.time()
        assert processes.call(0, "invalidate", old) is True
        seen = [processes.recv(i) for i in range(1, PROCESSES)]

        assert all(at is not None and at - sent < 1.0 for at in seen), (sent, seen)
        assert len(set(processes.call_all("get")) | {old}) == 2
        assert server.count("tenant") == 2
        processes.call_all("stop")


def test_an_app_ticket_set_in_one_process_serves_the_others(
    redis_server: RedisServer, fleet: Callable[[int], Fleet]
) -> None:
    with FakeFeishu() as server:
        server.add_app(MARKET_ID, MARKET_SECRET, marketplace=True)
        processes = fleet(3)
        config = fleet_config(server, redis_server, marketplace=True, ticket_wait=10.0)
        assert processes.call_all("start", config) == ["ok"] * 3

        # Process 1 needs the app token before any ticket exists: it asks Feishu to resend it
        # and waits for one in Redis; process 0 then receives the pushed ticket.
        processes.send(1, "get", "app", 15.0)
        wait_for(lambda: server.count("resend") == 1, 10, "the resend request")
        processes.call(0, "set_ticket", MARKET_ID, server.issue_ticket(MARKET_ID))
        token = processes.recv(1, timeout=15)
        # A process that starts with no ticket takes the one in Redis: no resend, no request.
        assert processes.call(2, "get", "app") == token

        assert server.count("resend") == 1
        assert server.count("app") == 1
        processes.call_all("stop")


class Stall(NamedTuple):
    token: str  # what the cold process got
    took: float  # how long its get took
    left: float  # what was left of the dead holder's lease when it started
    requests: int  # upstream requests it made


def cold_get_after_killed_holder(
    url: str, client: redis.Redis, store: RedisStore, lease: float | None
) -> Stall:
    """A holder (a process with the store's ``lease``, None for the default) takes the lease,
    is killed mid-fetch with SIGKILL; then a cold process gets the token, within 5 s (the
    README's ``get(timeout=5)``)."""
    holder = SPAWN.Process(target=blocking_holder, args=(url, PREFIX, APP, lease), daemon=True)
    holder.start()
    source = counting_source()
    try:
        wait_for(lambda: client.exists(KEYS.lease), 30, "the holder's lease")
        holder.kill()
        holder.join(5)
        left = client.pttl(KEYS.lease) / 1000
        started = time.monotonic()
        with actors.TokenSystem.start(APP, store=store, source=source) as system:
            token: str = system.proxy.get_token().get(timeout=5)
            took = time.monotonic() - started
    finally:
        holder.kill()
    return Stall(token, took, left, len(source.requests))


def test_a_lease_holder_killed_mid_fetch_is_taken_over_after_its_lease_expires(
    redis_server: RedisServer, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    stall = cold_get_after_killed_holder(redis_server.url, client, stores(), 3.0)

    assert stall.token == "t-000001-shared-token" and stall.requests == 1
    # It waited for the dead holder's lease to expire.
    assert stall.left - 0.02 <= stall.took < stall.left + 2.0
    assert json.loads(client.get(KEYS.value) or b"{}")["token"] == stall.token
    assert client.exists(KEYS.lease) == 0


def test_a_lease_holder_killed_mid_fetch_holds_up_a_cold_process_about_one_lease_by_default(
    redis_server: RedisServer, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    stall = cold_get_after_killed_holder(redis_server.url, client, stores(), None)

    assert stall.token == "t-000001-shared-token" and stall.requests == 1
    assert stall.took < DEFAULT_LEASE + 1.0  # the dead holder renewed its lease no more


def test_a_live_holder_keeps_its_lease_however_long_its_fetch_takes(
    client: redis.Redis, stores: Callable[..., RedisStore], systems: list[actors.TokenSystem]
) -> None:
    slow = counting_source(latency=3 * DEFAULT_LEASE)
    never = FunctionSource(lambda _r: AssertionError("the holder is alive: wait for it"))
    systems.append(actors.TokenSystem.start(APP, store=stores(), source=slow))
    systems.append(actors.TokenSystem.start(APP, store=stores(), source=never))

    first = systems[0].proxy.get_token()
    wait_for(lambda: client.exists(KEYS.lease), 5, "the holder's lease")
    second = systems[1].proxy.get_token()

    assert second.get(timeout=10) == first.get(timeout=10) == "t-000001-shared-token"
    assert never.requests == []


LIFETIME = 600.0  # well beyond the default safety margin
PAUSE = 2.5  # longer than the lease: another process takes over meanwhile


def test_a_holder_paused_past_its_lease_never_keeps_the_token_beyond_its_real_expiry(
    redis_server: RedisServer,
    client: redis.Redis,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    token = "t-paused-writer-0001"
    holder = SPAWN.Process(
        target=paused_holder,
        args=(redis_server.url, PREFIX, APP, actors.Grant(token, LIFETIME)),
        daemon=True,
    )
    holder.start()
    try:
        # The holder asked Feishu, got the token with LIFETIME left, and stopped (SIGSTOP)
        # before writing it: Feishu's clock for that token started before this moment.
        wait_for(lambda: stopped(cast(int, holder.pid)), 30, "the holder to stop")
        stopped_at = time.monotonic()

        def feishu(_request: actors.TokenRequest) -> actors.Grant:
            # Feishu hands out the same token again, with what is really left of it.
            return actors.Grant(token, LIFETIME - (time.monotonic() - stopped_at))

        systems.append(actors.TokenSystem.start(APP, store=stores(), source=FunctionSource(feishu)))
        assert systems[0].proxy.get_token().get(timeout=5) == token
        took_over = time.monotonic() - stopped_at
        time.sleep(max(0.0, PAUSE - took_over))  # the pause itself, not a wait for an event
        os.kill(cast(int, holder.pid), signal.SIGCONT)
        holder.join(30)
        assert holder.exitcode == 0  # it wrote its late answer and finished
        checked = time.monotonic()
        left = client.pttl(KEYS.value) / 1000
    finally:
        if holder.pid is not None and holder.is_alive():
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()

    assert took_over < DEFAULT_LEASE + 1.0  # the paused holder stopped renewing its lease
    # At most what Feishu still accepts (counted from the pause, which began after the
    # holder's request left): the late writer did not extend it by its pause.
    assert left <= LIFETIME - (checked - stopped_at) + 0.1, (left, checked - stopped_at)


# --- invalidation, tickets, stop -----------------------------------------------------------------


def test_an_invalidation_deletes_the_shared_value_and_every_system_drops_the_token(
    redis_server: RedisServer,
    client: redis.Redis,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    source = counting_source()
    made = [stores(redis_server.url) for _ in range(3)]
    systems.extend(actors.TokenSystem.start(APP, store=store, source=source) for store in made)
    assert all(wait_listening(store, timeout=5) for store in made)
    first = {s.proxy.get_token().get(timeout=5) for s in systems}
    assert first == {"t-000001-shared-token"}
    pubsub = cast(Any, client).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(layout.channel(PREFIX))

    assert systems[0].proxy.invalidate("t-000001-shared-token").get(timeout=5)

    for system in systems:
        wait_for(partial(holds, system, "t-000002-shared-token"), 1.0, "the new token everywhere")
    assert len(source.requests) == 2
    notices: list[dict[str, Any]] = []
    deadline = time.monotonic() + 2
    while not notices and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            notices.append(json.loads(message["data"]))
    pubsub.close()
    # Published once, with the token's digest only.
    assert [n["digest"] for n in notices] == [base.token_digest("t-000001-shared-token")]
    assert "t-000001" not in json.dumps(notices)


def test_after_a_notice_the_others_take_the_fresh_value_even_when_it_is_the_same_token(
    redis_server: RedisServer,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    # Upstream still considers the token valid and hands it out again (Feishu's same-token
    # rule): the processes that only got the notice must not each ask upstream once more.
    source = FunctionSource.constant("t-same-token-again-0", 7200.0)
    made = [stores(redis_server.url) for _ in range(3)]
    systems.extend(actors.TokenSystem.start(APP, store=store, source=source) for store in made)
    assert all(wait_listening(store, timeout=5) for store in made)
    assert {s.proxy.get_token().get(timeout=5) for s in systems} == {"t-same-token-again-0"}

    assert systems[0].proxy.invalidate("t-same-token-again-0").get(timeout=5)

    for system in systems[1:]:
        wait_for(partial(invalidated, system), 2, "the notice")
        system.settle()
    assert {s.proxy.get_token().get(timeout=5) for s in systems} == {"t-same-token-again-0"}
    assert len(source.requests) == 2  # the first fetch and the invalidating process's


def test_a_notice_of_the_previous_format_still_drops_the_token_during_a_rolling_upgrade(
    client: redis.Redis, stores: Callable[..., RedisStore], systems: list[actors.TokenSystem]
) -> None:
    store = stores()
    systems.append(actors.TokenSystem.start(APP, store=store, source=counting_source()))
    assert wait_listening(store, timeout=5)
    held = systems[0].proxy.get_token().get(timeout=5)
    digest = base.token_digest(held)

    client.publish(
        layout.channel(PREFIX),
        json.dumps({"v": 1, "digest": digest, "origin": "old-release", "at_ms": 1}),
    )

    wait_for(lambda: not holds(systems[0], held), 2, "the token dropped")
    assert client.exists(KEYS.value) == 1  # the new token, shared: the old one was deleted
    assert json.loads(client.get(KEYS.value) or b"{}")["token"] != held


def test_a_rejected_ticket_is_not_handed_back_and_a_new_one_is_awaited(
    redis_server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    resends: list[str] = []
    store = stores(redis_server.url, ticket_poll=1.0)
    other = stores(redis_server.url)
    source = FunctionSource(lambda _r: actors.Grant("t-x", 7200.0), resend=lambda app: None)
    shared = store.wrap(source, actors.RefreshPolicy())
    market = actors.AppConfig(MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE)

    assert shared.resend_ticket(market) is None  # none anywhere: asked Feishu, waited, nothing
    other.put_ticket(market, "ticket-1")
    assert shared.resend_ticket(market) == "ticket-1"  # from Redis, no resend
    resends.extend(source.resends)
    # Asked again: ticket-1 was refused. It is not handed back; a newer one shared later is.
    timer = threading.Timer(0.3, other.put_ticket, args=(market, "ticket-2"))
    timer.start()
    assert shared.resend_ticket(market) == "ticket-2"
    timer.join()
    assert source.resends == [MARKET_ID, MARKET_ID] and resends == [MARKET_ID]


def test_a_ticket_named_by_app_id_only_is_shared_once_the_store_has_served_that_app(
    client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    # The key names the app's credentials: an app_id alone does not say which they are.
    store = stores()
    assert store.put_ticket(MARKET_ID, "ticket-1") is False
    assert text_keys(client) == []
    shared = store.wrap(FunctionSource.constant("a-app-token", 7200.0), actors.RefreshPolicy())
    shared.fetch(request(app=MARKET, kind=actors.TokenKind.APP, app_ticket="ticket-0"))

    assert store.put_ticket(MARKET_ID, "ticket-1") is True
    assert stores().get_ticket(MARKET) == "ticket-1"


def test_stop_closes_the_store_and_leaves_no_thread_of_ours(
    redis_server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    store = stores(redis_server.url)
    system = actors.TokenSystem.start(APP, store=store, source=counting_source())
    assert wait_listening(store, timeout=5)
    system.proxy.get_token().get(timeout=5)

    system.stop()

    assert store.closed and our_threads() == []
    with pytest.raises(ValueError, match="closed"):
        store.attach(lambda _token: None)


def test_a_reopened_store_has_the_same_configuration_and_nothing_of_the_original(
    redis_server: RedisServer, stores: Callable[..., RedisStore], systems: list[actors.TokenSystem]
) -> None:
    options = {"op_timeout": 0.7, "lease": 2.0, "failure_threshold": 2, "cooldown": 3.0}
    store = stores(redis_server.url, prefix="reopen:", ticket_poll=0.4, **options)
    systems.append(actors.TokenSystem.start(MARKET, store=store, source=counting_source()))
    assert wait_listening(store, timeout=5)

    reopened = store.reopened()
    try:
        assert repr(reopened) == repr(store) and not reopened.closed
        assert (reopened.prefix, reopened.lease, reopened.ticket_poll) == ("reopen:", 2.0, 0.4)
        ours, theirs = cast(Any, reopened), cast(Any, store)
        for part in ("_client", "_breaker", "_ledger", "_lock", "_renewer", "_probe"):
            assert getattr(ours, part) is not getattr(theirs, part), part
        assert ours._client.connection_pool is not theirs._client.connection_pool
        assert ours._id != theirs._id  # its notices are the others' to hear, this one's too
        assert ours._notices is None  # not attached: the forked process's system does that
        assert reopened.put_ticket(MARKET, "ticket-1")
    finally:
        reopened.close()
    assert store.get_ticket(MARKET) == "ticket-1"  # closing it left the original alone


def test_reopening_takes_no_lock_of_the_original(
    redis_server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    # In a forked process, a lock some parent thread held at the fork stays held forever.
    store = stores(redis_server.url)
    internals = cast(Any, store)
    locks = [internals._lock, internals._client.connection_pool._lock, internals._renewer._cond]
    release = threading.Event()
    made: list[RedisStore] = []

    def hold() -> None:
        with locks[0], locks[1], locks[2]:
            held.set()
            release.wait(10)

    held = threading.Event()
    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)
    try:
        reopening = threading.Thread(target=lambda: made.append(store.reopened()), daemon=True)
        reopening.start()
        reopening.join(5)
        assert not reopening.is_alive() and len(made) == 1
    finally:
        release.set()
        holder.join(5)
    made[0].close()


def test_a_store_made_with_a_client_cannot_be_reopened(redis_server: RedisServer) -> None:
    # Its pool holds objects bound to it: the forked process makes a store of its own.
    with redis.Redis.from_url(redis_server.url) as client:
        store = RedisStore(client=client)
        with pytest.raises(NotImplementedError, match="client="):
            store.reopened()
        store.close()


def test_a_store_serves_one_system_and_validates_its_arguments(
    redis_server: RedisServer, stores: Callable[..., RedisStore], systems: list[actors.TokenSystem]
) -> None:
    store = stores(redis_server.url)
    systems.append(actors.TokenSystem.start(APP, store=store, source=counting_source()))
    for reuse in (
        lambda: store.attach(lambda _token: None),
        lambda: store.wrap(counting_source(), actors.RefreshPolicy()),
        lambda: actors.TokenSystem.start(APP, store=store, source=counting_source()),
    ):
        with pytest.raises(ValueError, match="already serves a TokenSystem"):
            reuse()
    # The refused system started nothing.
    assert sum(name.startswith("TokenActor") for name in our_threads()) == 1
    assert "pa55word" not in repr(RedisStore("redis://:pa55word@127.0.0.1:1/0"))
    with pytest.raises(ValueError, match="prefix"):
        RedisStore(redis_server.url, prefix="bad{prefix}")
    with pytest.raises(ValueError, match="op_timeout"):
        RedisStore(redis_server.url, op_timeout=float("nan"))
    with pytest.raises(ValueError, match="url= or client="):
        RedisStore()


# --- Redis failing -------------------------------------------------------------------------------


def hammer(systems: list[actors.TokenSystem], seconds: float, threads: int = 4) -> list[float]:
    """Get from every system in ``threads`` threads each for ``seconds``: each get's latency."""
    stop_at = time.monotonic() + seconds
    latencies: list[float] = []
    lock = threading.Lock()

    def run(system: actors.TokenSystem) -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            system.proxy.get_token().get(timeout=5)
            with lock:
                latencies.append(time.monotonic() - started)
            time.sleep(0.005)

    with ThreadPoolExecutor(threads * len(systems)) as pool:
        for future in [pool.submit(run, s) for s in systems for _ in range(threads)]:
            future.result()
    return latencies


def recovered(system: actors.TokenSystem, store: RedisStore) -> bool:
    churn([system], 1)
    return store_available(store)


def churn(systems: list[actors.TokenSystem], rounds: int) -> None:
    """Invalidate each system's token ``rounds`` times: every round is a fetch through the store."""
    for _ in range(rounds):
        for system in systems:
            token = system.proxy.get_token().get(timeout=5)
            system.proxy.invalidate(token).get(timeout=5)
            system.proxy.get_token().get(timeout=5)


def busy(made: list[RedisStore]) -> None:
    """Concurrent reads from each store, so that its pool holds several connections (redis-py
    replaces a dead one on checkout: none trips the breaker after a restart)."""
    with ThreadPoolExecutor(8) as pool:
        for store in made:
            list(pool.map(store.get_ticket, [MARKET] * 64))


def test_redis_killed_mid_run_every_get_is_answered_and_the_tier_recovers(
    redis_server: RedisServer,
    stores: Callable[..., RedisStore],
    systems: list[actors.TokenSystem],
    store_warnings: list[str],
) -> None:
    source = counting_source()
    options = {"op_timeout": 0.3, "failure_threshold": 2, "cooldown": 0.3}
    made = [stores(redis_server.url, **options) for _ in range(2)]
    systems.extend(actors.TokenSystem.start(APP, store=store, source=source) for store in made)
    assert {s.proxy.get_token().get(timeout=5) for s in systems} == {"t-000001-shared-token"}
    busy(made)  # several pooled connections per store, all dead once Redis is

    redis_server.kill()
    with ThreadPoolExecutor(1) as pool:
        traffic = pool.submit(hammer, systems, 1.5)
        churn(systems, 4)  # fetches with Redis gone: straight to the source
        latencies = traffic.result()

    assert latencies and max(latencies) < 2.0
    assert not any(store_available(store) for store in made)
    assert len(store_warnings) == 2 and all("is failing" in w for w in store_warnings)

    redis_server.start()
    for store, system in zip(made, systems, strict=True):
        wait_for(partial(recovered, system, store), 10, "recovery")
    busy(made)  # no dead connection left over to trip the breaker again
    assert sum("answers again" in w for w in store_warnings) == 2
    assert len(store_warnings) == 4  # one WARNING per change of state, not one per get
    # Sharing again: one system's refresh is the token the other finds next, with no request
    # (through the notice if both held the same token, else on its own next refresh).
    churn(systems[:1], 1)
    shared = systems[0].proxy.get_token().get(timeout=5)
    fetched = len(source.requests)
    held = systems[1].proxy.get_token().get(timeout=5)
    if held != shared:
        systems[1].proxy.invalidate(held).get(timeout=5)
    wait_for(partial(holds, systems[1], shared), 2, "the shared token")
    assert len(source.requests) == fetched


def test_a_hung_redis_does_not_hang_gets_or_stop(
    redis_server: RedisServer,
    stores: Callable[..., RedisStore],
    store_warnings: list[str],
) -> None:
    store = stores(redis_server.url, op_timeout=0.3, failure_threshold=2, cooldown=1.0)
    system = actors.TokenSystem.start(APP, store=store, source=counting_source())
    try:
        system.proxy.get_token().get(timeout=5)
        redis_server.pause()
        for _ in range(4):
            started = time.monotonic()
            churn([system], 1)
            assert time.monotonic() - started < 2.0
        assert store_warnings == [w for w in store_warnings if "is failing" in w]
        assert len(store_warnings) == 1
        started = time.monotonic()
        system.stop()
        assert time.monotonic() - started < 3.0 and our_threads() == []
    finally:
        redis_server.resume()
        system.stop()


def test_a_redis_unreachable_from_the_start_still_serves_tokens(
    stores: Callable[..., RedisStore], systems: list[actors.TokenSystem], store_warnings: list[str]
) -> None:
    store = stores(f"redis://127.0.0.1:{free_port()}/0", failure_threshold=1)
    source = counting_source()
    systems.append(actors.TokenSystem.start(APP, store=store, source=source))

    assert systems[0].proxy.get_token().get(timeout=5) == "t-000001-shared-token"
    churn(systems, 2)
    assert len(source.requests) == 3
    assert len(store_warnings) == 1 and "is failing" in store_warnings[0]

"""App_tickets in Redis: the newest one is kept, whichever process or store shares it, in
whichever order; a ticket of unknown age never replaces one known to be newer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import redis

import actors
from actors.stores import RedisStore
from actors.stores import _layout as layout
from actors.testing._stores import store_faults
from tests.conftest import MARKET_ID, MARKET_SECRET
from tests.redis_server import RedisServer, ticket_writer
from tests.stores.conftest import PREFIX, SPAWN, text_keys

MARKET = actors.AppConfig(
    MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url="http://127.0.0.1:9"
)
KEY = layout.ticket_key(PREFIX, MARKET)
HOUR = 3600.0


def made(hours_ago: float) -> float:
    return time.time() - hours_ago * HOUR


def stored(client: redis.Redis) -> dict[str, object]:
    value: dict[str, object] = json.loads(client.get(KEY) or b"{}")
    return value


def test_an_older_ticket_never_replaces_a_newer_one_shared_by_another_store(
    stores: Callable[..., RedisStore],
) -> None:
    first, second = stores(), stores()
    newer, older = made(1), made(2)

    assert first.put_ticket(MARKET, "ticket-newer", made_at=newer) is True
    assert second.put_ticket(MARKET, "ticket-older", made_at=older) is False  # a late delivery

    assert first.get_ticket(MARKET) == second.get_ticket(MARKET) == "ticket-newer"
    # A newer one, or the same delivery again, is written.
    assert second.put_ticket(MARKET, "ticket-newest", made_at=made(0)) is True
    assert second.put_ticket(MARKET, "ticket-newest", made_at=made(0)) is True
    assert first.get_ticket(MARKET) == "ticket-newest"


def test_an_older_ticket_never_replaces_a_newer_one_shared_by_another_process(
    redis_server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    def run(tickets: list[tuple[str, float | None]]) -> None:
        args = (redis_server.url, PREFIX, MARKET, tickets)
        process = SPAWN.Process(target=ticket_writer, args=args, daemon=True)
        process.start()
        process.join(30)
        assert process.exitcode == 0

    now = time.time()
    run([("ticket-newer", now - HOUR)])
    run([("ticket-older", now - 2 * HOUR), ("ticket-unknown-age", None)])  # a replay, then one
    assert stores().get_ticket(MARKET) == "ticket-newer"

    # Two processes sharing 30 tickets each, in opposite orders and at the same time: whatever
    # the interleaving, the newest stays.
    forward = [(f"ticket-{n:02d}", now - HOUR + n) for n in range(30)]
    writers = [
        SPAWN.Process(
            target=ticket_writer, args=(redis_server.url, PREFIX, MARKET, order), daemon=True
        )
        for order in (forward, forward[::-1])
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
        assert writer.exitcode == 0
    assert stores().get_ticket(MARKET) == "ticket-29"


def test_a_ticket_of_unknown_age_replaces_only_a_ticket_of_unknown_age(
    stores: Callable[..., RedisStore],
) -> None:
    store = stores()
    assert store.put_ticket(MARKET, "ticket-1") is True
    assert store.put_ticket(MARKET, "ticket-2") is True  # neither says when it was made
    assert store.get_ticket(MARKET) == "ticket-2"

    assert store.put_ticket(MARKET, "ticket-3", made_at=made(1)) is True
    assert store.put_ticket(MARKET, "ticket-4") is False
    assert store.get_ticket(MARKET) == "ticket-3"


def test_a_ticket_value_carries_when_it_was_made_and_is_kept_twelve_hours_from_then(
    client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    store = stores()
    made_at = made(2)

    assert store.put_ticket(MARKET, "ticket-1", made_at=made_at)

    assert stored(client) == {
        "v": 2,
        "ticket": "ticket-1",
        "owner": layout.owner(KEY),
        "made_at_ms": round(made_at * 1000),
    }
    assert 9.9 * HOUR < client.pttl(KEY) / 1000 <= 10 * HOUR
    # One made more than 12 h ago is dead already: it is not shared at all.
    assert store.put_ticket(MARKET, "ticket-0", made_at=made(13)) is False
    assert store.get_ticket(MARKET) == "ticket-1"


def test_a_ticket_written_without_a_creation_time_is_still_read_and_is_replaced_by_any(
    client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    # As a process of the previous release writes it.
    client.set(KEY, layout.ticket_value(KEY, "ticket-old-format"), px=layout.TICKET_TTL_MS)
    store = stores()

    assert store.get_ticket(MARKET) == "ticket-old-format"
    assert store.put_ticket(MARKET, "ticket-dated", made_at=made(1)) is True
    assert store.get_ticket(MARKET) == "ticket-dated"
    assert store_faults(store) == {}


@pytest.mark.parametrize("made_at_ms", ["soon", None, 1.5, -1, 2**60])
def test_a_stored_ticket_with_a_creation_time_that_is_not_one_is_unusable_and_replaced(
    made_at_ms: object, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    value = {"v": 2, "ticket": "ticket-bad", "owner": layout.owner(KEY), "made_at_ms": made_at_ms}
    client.set(KEY, json.dumps(value), px=layout.TICKET_TTL_MS)
    store = stores()

    assert store.get_ticket(MARKET) is None
    client.set(KEY, json.dumps(value), px=layout.TICKET_TTL_MS)
    assert store.put_ticket(MARKET, "ticket-good") is True  # of unknown age, yet it replaces it
    assert store.get_ticket(MARKET) == "ticket-good"
    assert store_faults(store) == {"not a creation time": 2}


@pytest.mark.parametrize("made_at", [float("nan"), float("inf"), -1.0, 1.7e12, True, "1"])
def test_a_creation_time_that_is_not_unix_seconds_is_refused(
    made_at: object, client: redis.Redis, stores: Callable[..., RedisStore]
) -> None:
    # Milliseconds passed as seconds would keep every later ticket out for 12 hours.
    with pytest.raises(ValueError, match="made_at"):
        stores().put_ticket(MARKET, "ticket-1", made_at=made_at)  # type: ignore[arg-type]
    assert text_keys(client) == []

"""The JSSDK's jsapi_ticket and h5sdk.config: the signature (checked against the documented
SHA-1 string written out here), and the ticket cached per tenant like a token (one request for
many pages, prewarmed, a tenant's own ticket) through a running system and the fake Feishu."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import actors
from actors.testing import FakeFeishu
from tests.conftest import APP_ID, MARKET_ID, MARKET_SECRET, SECRET, SystemFactory

JSAPI = actors.TokenKind.JSAPI_TICKET
TICKET_PATH = "/open-apis/jssdk/ticket/get"
PAGE = "https://app.example.com/page?id=7"
TIMEOUT = 5.0


@pytest.fixture
def server(clock: actors.ManualClock) -> Iterator[FakeFeishu]:
    # On the suite's ManualClock: tickets (and tokens) live in virtual time.
    with FakeFeishu(clock=clock) as fake:
        fake.add_app(APP_ID, SECRET)
        fake.add_app(MARKET_ID, MARKET_SECRET, marketplace=True)
        yield fake


def ticket_requests(server: FakeFeishu) -> int:
    return sum(1 for r in server.requests if r.path == TICKET_PATH)


def documented(ticket: str, nonce: str, timestamp: int, url: str) -> str:
    text = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}"
    return hashlib.sha1(text.encode()).hexdigest()


def test_the_signature_is_the_documented_sha1_and_the_fragment_is_not_signed() -> None:
    expected = documented("jt-1", "abc", 1700000000000, PAGE)
    assert actors.jsapi_signature("jt-1", PAGE, "abc", 1700000000000) == expected
    assert actors.jsapi_signature("jt-1", PAGE + "#/tab", "abc", 1700000000000) == expected
    assert actors.jsapi_signature("jt-2", PAGE, "abc", 1700000000000) != expected


@pytest.mark.parametrize(
    ("ticket", "url", "nonce", "timestamp"),
    [
        ("", PAGE, "n", 1),
        ("jt", "ftp://x/", "n", 1),
        ("jt", "https://x/ y", "n", 1),
        ("jt", "https://", "n", 1),
        ("jt", "https://#x", "n", 1),
        ("jt", "https://[::1/", "n", 1),
        ("jt", PAGE, "", 1),
        ("jt", PAGE, "a&b", 1),
        ("jt", PAGE, "n", -1),
        ("jt", PAGE, "n", 1.5),
    ],
)
def test_bad_signature_arguments_are_value_errors(
    ticket: str, url: str, nonce: str, timestamp: int
) -> None:
    with pytest.raises(ValueError, match=r"ticket|url|nonce|timestamp"):
        actors.jsapi_signature(ticket, url, nonce, timestamp)


def test_an_upper_case_scheme_is_a_page_url_too() -> None:
    assert actors.jsapi_signature("jt", "HTTPS://x.example/p#f", "n", 1) == documented(
        "jt", "n", 1, "HTTPS://x.example/p"
    )


def test_a_ticket_is_no_bearer_token_for_the_http_integrations(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    with pytest.raises(ValueError, match="no Bearer token"):
        actors.FeishuAuth(system, JSAPI)


def test_the_ticket_is_invalidated_and_shared_through_a_store_like_every_kind(
    app: actors.AppConfig, server: FakeFeishu, clock: actors.ManualClock, tmp_path: Path
) -> None:
    policy = actors.RefreshPolicy(seed=7, retry_base=0.0)
    path = tmp_path / "tokens.db"
    with (
        actors.TokenSystem.start(
            app, policy=policy, clock=clock, store=actors.SqliteStore(path)
        ) as one,
        actors.TokenSystem.start(
            app, policy=policy, clock=clock, store=actors.SqliteStore(path)
        ) as two,
    ):
        ticket = one.proxy.get_token(JSAPI).get(timeout=TIMEOUT)
        assert two.proxy.get_token(JSAPI).get(timeout=TIMEOUT) == ticket
        assert ticket_requests(server) == 1
        assert actors.testing.wait_listening(two._process.store, timeout=TIMEOUT)  # type: ignore[arg-type]
        server.rotate(app.app_id)  # Feishu reset the app's tokens and tickets: pages fail
        assert one.proxy.invalidate(ticket).get(timeout=TIMEOUT) is True
        new = one.proxy.get_token(JSAPI).get(timeout=TIMEOUT)
        assert new != ticket
        # One refused for the dead tenant token it carried, one with the tenant's new token.
        assert ticket_requests(server) == 3
        # The other system hears of the invalidation (the store's notice) and takes the new one.
        deadline = time.monotonic() + TIMEOUT
        while two.proxy.get_token(JSAPI).get(timeout=TIMEOUT) != new:
            assert time.monotonic() < deadline, "the invalidation never reached the other system"
            time.sleep(0.02)
        assert ticket_requests(server) == 3


def test_concurrent_configs_on_a_cold_tenant_make_one_ticket_request(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app, fast_reads=False)
    futures = [system.proxy.jsapi_config(f"{PAGE}&n={i}#x") for i in range(32)]
    configs = [f.get(timeout=TIMEOUT) for f in futures]
    assert ticket_requests(server) == 1
    ticket = system.proxy.get_token(JSAPI).get(timeout=TIMEOUT)
    for i, config in enumerate(configs):
        assert set(config) == {"appId", "timestamp", "nonceStr", "signature"}
        assert config["appId"] == app.app_id
        nonce, stamp = str(config["nonceStr"]), int(config["timestamp"])
        assert config["signature"] == documented(ticket, nonce, stamp, f"{PAGE}&n={i}")
    assert len({c["nonceStr"] for c in configs}) == 32
    assert ticket_requests(server) == 1


def test_the_ticket_is_prewarmed_before_it_expires(
    make_system: SystemFactory,
    app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(app)
    first = system.jsapi_config(PAGE)
    old = system.proxy.get_token(JSAPI).get(timeout=TIMEOUT)
    assert first["signature"] == documented(
        old, str(first["nonceStr"]), int(first["timestamp"]), PAGE
    )
    clock.advance(7200 - 400)  # past the prewarm (lead 600 s +- 10 %), before the margin
    system.settle()
    assert ticket_requests(server) == 2
    before = ticket_requests(server)
    new = system.proxy.get_token(JSAPI).get(timeout=TIMEOUT)
    assert new != old
    assert ticket_requests(server) == before  # served from the cache: nobody waited


def test_each_tenant_of_a_marketplace_app_has_its_own_ticket(
    make_system: SystemFactory, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(market_app)
    system.proxy.set_app_ticket(server.issue_ticket(MARKET_ID)).get(timeout=TIMEOUT)
    one = system.proxy.get_token(JSAPI, tenant_key="tenant_a").get(timeout=TIMEOUT)
    two = system.proxy.get_token(JSAPI, tenant_key="tenant_b").get(timeout=TIMEOUT)
    assert one != two
    assert ticket_requests(server) == 2
    config = system.jsapi_config(PAGE, tenant_key="tenant_b")
    assert config["signature"] == documented(
        two, str(config["nonceStr"]), int(config["timestamp"]), PAGE
    )
    with pytest.raises(ValueError, match="tenant_key is required"):
        system.jsapi_config(PAGE)


def test_a_self_built_app_refuses_a_tenant_key_and_a_bad_url(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    with pytest.raises(ValueError, match="tenant_key is not accepted"):
        system.jsapi_config(PAGE, tenant_key="tenant_a")
    with pytest.raises(ValueError, match="url"):
        system.jsapi_config("/relative")


def test_a_refused_tenant_token_is_dropped_and_the_ticket_fetched_with_a_new_one(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app, retry_base=0.0)
    tenant = system.proxy.get_token().get(timeout=TIMEOUT)
    server.rotate(app.app_id)  # the cached tenant token is dead at Feishu now
    assert system.jsapi_config(PAGE)["signature"]
    assert system.proxy.get_token().get(timeout=TIMEOUT) != tenant


def test_the_async_front_serves_configs_without_blocking_the_loop(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app)

    async def pages() -> list[dict[str, str | int]]:
        return list(await asyncio.gather(*(system.proxy.ajsapi_config(PAGE) for _ in range(16))))

    configs = asyncio.run(pages())
    assert len(configs) == 16
    assert ticket_requests(server) == 1

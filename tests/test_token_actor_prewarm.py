"""Refresh-ahead: prewarm from the scheduler, stale-while-revalidate, the fetch cap, idle keys.

Everything runs on a ManualClock with a fake server on the same clock: hours of token life in
a fraction of a second, the same result every run.
"""

from __future__ import annotations

import pykka
import pytest

import actors
from actors.testing import FakeFeishu, Reply
from tests.conftest import MARKET_ID, MARKET_SECRET, SystemFactory


def start_marketplace(
    make_system: SystemFactory, vserver: FakeFeishu, *, max_concurrent_fetches: int
) -> actors.TokenSystem:
    """A marketplace app holding a valid ticket, prewarms without jitter (all due at once)."""
    market = actors.AppConfig(
        MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=vserver.base_url
    )
    system = make_system(market, max_concurrent_fetches=max_concurrent_fetches, jitter=0.0)
    system.proxy.set_app_ticket(vserver.issue_ticket(MARKET_ID)).get(timeout=5)
    return system


def test_a_day_of_gets_costs_one_fetch_per_token_lifetime_and_no_caller_waits(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(vapp)
    system.proxy.get_token().get(timeout=5)
    system.settle()
    for _ in range(24 * 60):  # one get per virtual minute
        clock.advance(60)
        system.settle()
        future = system.proxy.get_token()
        token = future.get(timeout=5)
        assert vserver.valid_token(token)
    metrics = system.metrics()
    expected = 24 * 3600 / (7200 - 600)  # about 13
    upstream = vserver.count("tenant") - 1
    assert expected - 1.5 <= upstream <= expected + 1.5
    assert metrics.misses == 1  # only the cold start; every later get was a hit
    assert metrics.coalesced == 0
    assert metrics.hits == 24 * 60
    assert metrics.prewarms == upstream


def test_invalidating_a_token_during_its_prewarms_backoff_leaves_the_retry_due(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    # The invalidation joins the refresh under way: the retry it waits for must still come.
    system = make_system(vapp, retry_base=5.0, retry_cap=5.0, jitter=0.0)
    old = system.proxy.get_token().get(timeout=5)
    vserver.script("tenant", Reply.http(503))
    clock.advance(7200 - 600)  # the prewarm point: its first attempt fails, a retry is due
    system.settle()
    assert system.proxy.invalidate(old).get(timeout=5)
    waiting = system.proxy.get_token()  # nothing servable now: it waits for the retry
    clock.advance(5.0)
    system.settle()
    new = waiting.get(timeout=0)
    assert new != old
    assert vserver.valid_token(new)


def test_a_failing_prewarm_keeps_serving_the_valid_token_and_later_succeeds(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(vapp, max_attempts=3, retry_base=5.0, retry_cap=20.0, jitter=0.0)
    old = system.proxy.get_token().get(timeout=5)
    outage = [Reply.http(503)] * 4  # one whole refresh cycle (3 attempts) and one more
    vserver.script("tenant", *outage)
    clock.advance(7200 - 600)  # the prewarm point
    system.settle()
    served = set()
    for _ in range(20):  # the next 200 s: retries fail, callers keep getting the old token
        served.add(system.proxy.get_token().get(timeout=5))
        clock.advance(10)
        system.settle()
    metrics = system.metrics()
    assert metrics.fetch_failure == 4
    assert metrics.stale_served > 0
    assert metrics.misses == 1
    new = system.proxy.get_token().get(timeout=5)
    assert new != old
    assert served <= {old, new}
    assert vserver.valid_token(new)


def test_a_refresh_that_returns_the_cached_token_reschedules_and_never_loops(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(vapp, jitter=0.0)
    token = system.proxy.get_token().get(timeout=5)
    # The server keeps answering with the same token and its (shrinking) remaining lifetime.
    vserver.script("tenant", *[Reply.ok(token, 600 - 60 * i) for i in range(10)])
    clock.advance(7200 - 600)
    for _ in range(60):
        clock.advance(5)
        system.settle()
    metrics = system.metrics()
    # Each same-token answer pushes the next prewarm at least halfway to the hard deadline:
    # a handful of refreshes, not one per settle.
    assert 1 <= metrics.same_token_refreshes <= 6
    assert vserver.count("tenant") <= 7


def test_prewarms_across_many_tenants_respect_the_concurrency_cap(
    make_system: SystemFactory, vserver: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = start_marketplace(make_system, vserver, max_concurrent_fetches=4)
    tenants = [f"tenant-{i:03}" for i in range(200)]
    first = {t: system.proxy.get_token(tenant_key=t) for t in tenants}
    tokens = {t: f.get(timeout=10) for t, f in first.items()}
    vserver.reset_stats()
    vserver.set_latency(0.01)  # real latency so that the cap, not luck, limits overlap
    clock.advance(7200 - 600)  # every tenant is due for prewarm at the same instant
    system.settle(timeout=30)
    assert vserver.max_in_flight == 4
    assert vserver.count("tenant") == 200
    for tenant in tenants:
        fresh = system.proxy.get_token(tenant_key=tenant).get(timeout=5)
        assert fresh != tokens[tenant]
    assert system.metrics().misses == 200  # only the cold start


def test_callers_waiting_go_before_prewarms_in_the_fetch_queue(
    make_system: SystemFactory, vserver: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = start_marketplace(make_system, vserver, max_concurrent_fetches=1)
    for i in range(5):
        system.proxy.get_token(tenant_key=f"old-{i}").get(timeout=5)
    gate = vserver.hold("tenant")
    clock.advance(7200 - 600)  # five prewarms queue behind the cap of 1
    assert gate.wait_for_waiting(1)
    urgent = system.proxy.get_token(tenant_key="new")
    system.proxy.metrics().get(timeout=5)  # the get is in; release the held prewarm
    gate.release()
    urgent.get(timeout=5)
    system.settle()
    order = [r.tenant_key for r in vserver.requests if r.kind == "tenant"][5:]
    assert order[1] == "new"  # right after the prewarm that held the only slot


def test_a_key_nobody_reads_is_dropped_instead_of_prewarmed_forever(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(vapp, idle_ttl=4 * 7200.0)
    system.proxy.get_token().get(timeout=5)
    for _ in range(24 * 6):  # a day without reads, in 10-minute steps
        clock.advance(600)
        system.settle()
    metrics = system.metrics()
    assert metrics.idle_evictions == 1
    assert metrics.keys_cached == 0
    assert vserver.count("tenant") <= 1 + 4  # refreshed while it might still be used, then dropped
    future = system.proxy.get_token()
    system.settle()
    assert vserver.valid_token(future.get(timeout=5))
    assert system.metrics().misses == 2


def test_every_get_resolves_when_the_upstream_is_down(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(vapp, max_attempts=2)
    vserver.script("tenant", *[Reply.http(500)] * 20)
    futures = [system.proxy.get_token() for _ in range(10)]
    for _ in range(100):
        clock.advance(1)
        system.settle()
    for future in futures:
        with pytest.raises(actors.UpstreamError):
            future.get(timeout=0)
    with pytest.raises(pykka.Timeout):
        system.proxy.get_token().get(timeout=0)  # a new get starts a new cycle, not a cached error


def test_a_token_that_expires_within_the_margin_is_retried_not_cached_or_looped(
    make_system: SystemFactory,
    vapp: actors.AppConfig,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(vapp, safety_margin=180.0, max_attempts=3, retry_base=1.0)
    vserver.script("tenant", *[Reply.ok(f"t-short{i}", 100) for i in range(10)])
    future = system.proxy.get_token()
    for _ in range(60):
        system.settle()
        clock.advance(1)
    with pytest.raises(actors.UpstreamError, match="safety margin"):
        future.get(timeout=0)
    assert vserver.count("tenant") == 3  # max_attempts, then nothing: no refresh loop
    assert system.metrics().keys_cached == 0

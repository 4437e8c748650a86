"""The TokenActor: retries, argument errors, marketplace apps and the reply-message API.

What every read path must do (single flight, hits, permanent errors, invalidation, stop, the
safety margin, a mailbox that never waits for a fetch) is in test_read_paths.py, run once per path.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pykka
import pytest

import actors
from actors.testing import FakeFeishu, Reply
from tests.conftest import MARKET_ID, SECRET, SystemFactory, drive, forward_tickets

TENANT = actors.TokenKind.TENANT
APP = actors.TokenKind.APP


@pytest.mark.parametrize(
    "reply",
    [Reply.http(502), Reply.http(200, "<html>oops</html>"), Reply.truncated(), Reply.disconnect()],
    ids=["5xx", "html", "truncated", "disconnect"],
)
def test_transient_failures_are_retried_then_fail_with_the_attempt_count(
    make_system: SystemFactory,
    app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
    reply: Reply,
) -> None:
    system = make_system(app, max_attempts=3, retry_base=1.0, retry_cap=4.0)
    server.script("tenant", reply, reply, reply)
    future = system.proxy.get_token()
    with pytest.raises(actors.UpstreamError) as info:
        drive(system, clock, future)
    assert info.value.attempts == 3
    assert server.count("tenant") == 3
    metrics = system.metrics()
    assert (metrics.fetch_failure, metrics.retries, metrics.fetch_success) == (3, 2, 0)
    # The failure was not cached as a token: the script is used up, so the next get succeeds.
    token = drive(system, clock, system.proxy.get_token())
    assert server.valid_token(token)


def test_a_transient_failure_then_success_resolves_the_waiters(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = make_system(app, max_attempts=5)
    server.script("tenant", Reply.http(503), Reply.http(503))
    futures = [system.proxy.get_token() for _ in range(3)]
    token = drive(system, clock, futures[0], step=0.5)
    assert all(f.get(timeout=5) == token for f in futures)
    assert server.count("tenant") == 3


def test_connection_refused_and_read_timeouts_are_retried(
    make_system: SystemFactory, server: FakeFeishu, clock: actors.ManualClock
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = actors.AppConfig("cli_test", SECRET, base_url=f"http://127.0.0.1:{port}")
    system = make_system(dead, max_attempts=2)
    with pytest.raises(actors.UpstreamError) as info:
        drive(system, clock, system.proxy.get_token())
    assert info.value.attempts == 2

    live = actors.AppConfig("cli_test", SECRET, base_url=server.base_url)
    timeouts = make_system(live, max_attempts=2, request_timeout=(1.0, 0.1))
    gate = server.hold("tenant")
    try:
        with pytest.raises(actors.UpstreamError, match="timed out") as info:
            drive(timeouts, clock, timeouts.proxy.get_token())
        assert info.value.attempts == 2
    finally:
        gate.release()


def test_rate_limit_backoff_waits_at_least_the_reset_header(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = make_system(app, retry_base=0.01, retry_cap=0.02)
    server.script("tenant", Reply.rate_limited(reset=30))
    future = system.proxy.get_token()
    system.settle()
    clock.advance(29)
    system.settle()
    assert server.count("tenant") == 1  # still backing off, as the header asked
    clock.advance(1)
    system.settle()
    assert server.valid_token(future.get(timeout=5))
    assert server.count("tenant") == 2


def test_rate_limited_error_after_max_attempts_carries_retry_after(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = make_system(app, max_attempts=2)
    server.script("tenant", Reply.rate_limited(reset=3), Reply.rate_limited(reset=3))
    with pytest.raises(actors.RateLimitedError) as info:
        drive(system, clock, system.proxy.get_token())
    assert (info.value.retry_after, info.value.attempts) == (3.0, 2)


def test_unknown_app_and_tenant_key_on_self_built_app_fail_through_the_future(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    with pytest.raises(ValueError, match="unknown app_id"):
        system.proxy.get_token(app_id="cli_nope").get(timeout=5)
    with pytest.raises(ValueError, match="tenant_key"):
        system.proxy.get_token(tenant_key="tk").get(timeout=5)


def test_another_actor_gets_tokens_as_reply_messages(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    replies: list[actors.TokenReply] = []
    done = threading.Event()

    class Caller(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            if isinstance(message, actors.TokenReply):
                replies.append(message)
                if len(replies) == 2:
                    done.set()

    caller = Caller.start()
    try:
        system.actor_ref.tell(actors.GetToken(reply_to=caller, tag="a"))
        system.actor_ref.tell(actors.GetToken(reply_to=caller, tag="b", app_id="cli_nope"))
        assert done.wait(5)
    finally:
        caller.stop()
    by_tag = {r.tag: r for r in replies}
    assert by_tag["a"].token is not None and by_tag["a"].error is None
    assert by_tag["a"].token not in repr(by_tag["a"])
    assert isinstance(by_tag["b"].error, ValueError)
    assert pykka.ActorRegistry.get_by_class(actors.TokenActor)


# --- marketplace apps -------------------------------------------------------------------------


def test_marketplace_get_asks_for_a_ticket_and_resumes_when_it_arrives(
    make_system: SystemFactory, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(market_app)
    forward_tickets(server, system)
    futures = [system.proxy.get_token(tenant_key=f"tenant-{i}") for i in range(3)]
    tokens = [f.get(timeout=5) for f in futures]
    assert len(set(tokens)) == 3
    assert all(server.valid_token(t) for t in tokens)
    assert server.count("resend") == 1
    assert server.count("app") == 1  # one app token, reused for every tenant
    assert server.count("tenant") == 3


def test_a_rejected_ticket_is_dropped_and_resent(
    make_system: SystemFactory, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(market_app)
    system.proxy.set_app_ticket("stale-ticket").get(timeout=5)
    forward_tickets(server, system)
    token = system.proxy.get_token(tenant_key="tk").get(timeout=5)
    assert server.valid_token(token)
    assert server.count("app") == 2  # 10012 with the stale ticket, then success
    assert server.count("resend") == 1


def test_gets_fail_with_app_ticket_error_when_no_ticket_arrives_in_time(
    make_system: SystemFactory,
    market_app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(market_app, ticket_wait=60.0)
    futures = [system.proxy.get_token(tenant_key="tk"), system.proxy.get_token(APP)]
    system.settle()
    clock.advance(59)
    system.settle()
    with pytest.raises(pykka.Timeout):
        futures[0].get(timeout=0)
    clock.advance(1)
    system.settle()
    for future in futures:
        with pytest.raises(actors.AppTicketError, match=MARKET_ID):
            future.get(timeout=5)
    assert server.count("resend") == 1
    assert server.count("app") == 0  # an empty ticket is never sent


def test_a_stale_app_token_is_refetched_for_the_tenant_step(
    make_system: SystemFactory,
    market_app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(market_app)
    system.proxy.set_app_ticket(server.issue_ticket(MARKET_ID)).get(timeout=5)
    system.proxy.get_token(tenant_key="t1").get(timeout=5)
    server.rotate(MARKET_ID)  # the cached app token is no longer accepted
    token = drive(system, clock, system.proxy.get_token(tenant_key="t2"))
    assert server.valid_token(token)
    assert server.count("app") == 2


def test_set_app_ticket_validates_its_arguments(
    make_system: SystemFactory, app: actors.AppConfig, market_app: actors.AppConfig
) -> None:
    system = make_system([app, market_app])
    with pytest.raises(ValueError, match="self-built"):
        system.proxy.set_app_ticket("x", app_id=app.app_id).get(timeout=5)
    with pytest.raises(ValueError, match="non-empty"):
        system.proxy.set_app_ticket("", app_id=MARKET_ID).get(timeout=5)
    for made_at in (float("nan"), float("inf"), -1.0, True, "1700000000", 1_700_000_000_000):
        with pytest.raises(ValueError, match="made_at"):
            system.proxy.set_app_ticket("x", app_id=MARKET_ID, made_at=made_at).get(timeout=5)  # type: ignore[arg-type]
    assert system.proxy.set_app_ticket("ticket", app_id=MARKET_ID).get(timeout=5) is None
    assert system.proxy.set_app_ticket("t", app_id=MARKET_ID, made_at=1.7e9).get(timeout=5) is None


# --- the order of app_tickets: the event's creation time (made_at) ------------------------------

MADE = 1_700_000_000.0


def hand_over(system: actors.TokenSystem, ticket: str, made_at: float | None, front: str) -> None:
    if front == "coroutine":
        asyncio.run(system.proxy.aset_app_ticket(ticket, made_at=made_at))
    else:
        system.proxy.set_app_ticket(ticket, made_at=made_at).get(timeout=5)


@pytest.mark.parametrize(
    ("late_made_at", "front"),
    [(MADE - 3600, "future"), (None, "future"), (MADE - 1, "coroutine")],
    ids=["made-earlier", "no-time", "made-earlier-coroutine"],
)
def test_a_ticket_made_earlier_or_without_a_time_never_replaces_one_with_a_time(
    make_system: SystemFactory,
    market_app: actors.AppConfig,
    server: FakeFeishu,
    late_made_at: float | None,
    front: str,
) -> None:
    system = make_system(market_app)
    old = server.issue_ticket(MARKET_ID)
    new = server.issue_ticket(MARKET_ID)  # Feishu's next push: the old ticket dies
    hand_over(system, new, MADE, front)

    hand_over(system, old, late_made_at, front)  # a late or replayed delivery

    assert server.valid_token(system.proxy.get_token(APP).get(timeout=5))
    assert (server.count("app"), server.count("resend")) == (1, 0)  # the new ticket, at once


def test_tickets_without_times_replace_each_other_in_the_order_handed_over(
    make_system: SystemFactory, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(market_app)
    system.proxy.set_app_ticket(server.issue_ticket(MARKET_ID)).get(timeout=5)

    system.proxy.set_app_ticket(server.issue_ticket(MARKET_ID)).get(timeout=5)

    assert server.valid_token(system.proxy.get_token(APP).get(timeout=5))
    assert (server.count("app"), server.count("resend")) == (1, 0)


def test_a_refused_ticket_and_older_ones_stay_out_and_a_newer_one_gets_in(
    make_system: SystemFactory, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(market_app)
    older = server.issue_ticket(MARKET_ID)
    refused = server.issue_ticket(MARKET_ID)
    server.issue_ticket(MARKET_ID)  # one the system never gets: Feishu refuses the ones before
    system.proxy.set_app_ticket(refused, made_at=MADE).get(timeout=5)
    forward_tickets(server, system)  # the app's handler of Feishu's re-push (no time given)
    token = system.proxy.get_token(APP).get(timeout=5)  # 10012, resend, the pushed ticket
    assert (server.count("app"), server.count("resend")) == (2, 1)

    system.proxy.set_app_ticket(refused, made_at=MADE).get(timeout=5)  # replayed
    system.proxy.set_app_ticket(older, made_at=MADE - 60).get(timeout=5)
    system.proxy.invalidate(token).get(timeout=5)
    assert server.valid_token(system.proxy.get_token(APP).get(timeout=5))
    assert (server.count("app"), server.count("resend")) == (3, 1)  # the pushed ticket still

    newest = server.issue_ticket(MARKET_ID)
    system.proxy.set_app_ticket(newest, made_at=MADE + 3600).get(timeout=5)
    system.proxy.invalidate(system.proxy.get_token(APP).get(timeout=5)).get(timeout=5)
    assert server.valid_token(system.proxy.get_token(APP).get(timeout=5))
    assert (server.count("app"), server.count("resend")) == (4, 1)


def test_a_get_token_with_a_bad_reply_to_does_not_strand_the_other_callers(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app, max_concurrent_fetches=1)
    gate = server.hold("tenant")
    first = system.proxy.get_token()
    assert gate.wait_for_waiting(1)
    # The actor object instead of its ref: a plausible embedding mistake.
    system.actor_ref.tell(actors.GetToken(reply_to=object(), tag="oops"))  # type: ignore[arg-type]
    second = system.proxy.get_token()
    gate.release()
    assert first.get(timeout=5) == second.get(timeout=5)
    other = system.proxy.get_token(actors.TokenKind.APP)  # the only fetch slot is free again
    assert other.get(timeout=5).startswith("a-")


def test_a_late_ticket_rejection_uses_the_ticket_that_arrived_meanwhile(
    make_system: SystemFactory, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(market_app)
    system.proxy.set_app_ticket(server.issue_ticket(MARKET_ID)).get(timeout=5)
    gate = server.hold("app")
    future = system.proxy.get_token(APP)
    assert gate.wait_for_waiting(1)
    # Feishu's hourly push replaces the ticket while the request with the old one is out.
    system.proxy.set_app_ticket(server.issue_ticket(MARKET_ID)).get(timeout=5)
    gate.release()
    assert server.valid_token(future.get(timeout=5))
    assert server.count("resend") == 0  # the new ticket was used, not thrown away
    assert server.count("app") == 2


def test_tickets_that_keep_being_rejected_end_in_app_ticket_error(
    make_system: SystemFactory, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(market_app, max_attempts=3)

    def push_a_bad_ticket(app_id: str, ticket: str) -> None:
        system.proxy.set_app_ticket("not-the-ticket", app_id=app_id)

    server.on_ticket_resend = push_a_bad_ticket
    with pytest.raises(actors.AppTicketError, match="rejected"):
        system.proxy.get_token(APP).get(timeout=5)
    assert server.count("app") == 3

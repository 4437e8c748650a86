"""The token-source seam: any TokenSource can feed a TokenSystem, no HTTP involved."""

from __future__ import annotations

import itertools
import threading

import pytest
import requests

import actors
from actors.testing import FunctionSource

APP = actors.AppConfig("cli_src", "secret")
MARKET = actors.AppConfig("cli_mkt", "secret", app_type=actors.AppType.MARKETPLACE)


def test_a_system_gets_its_tokens_from_an_injected_source() -> None:
    source = FunctionSource.constant("t-from-source")
    with actors.TokenSystem.start(APP, source=source, clock=actors.ManualClock()) as system:
        assert system.proxy.get_token().get(timeout=5) == "t-from-source"
        assert system.proxy.get_token().get(timeout=5) == "t-from-source"
    (request,) = source.requests
    assert (request.app, request.kind, request.tenant_key) == (APP, actors.TokenKind.TENANT, None)


def test_concurrent_misses_reach_the_source_once() -> None:
    release = threading.Event()
    counter = itertools.count(1)

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        release.wait(5)
        return actors.Grant(f"t-{next(counter)}", 7200.0)

    source = FunctionSource(fetch)
    with actors.TokenSystem.start(APP, source=source) as system:
        futures = [system.proxy.get_token() for _ in range(20)]
        release.set()
        assert {f.get(timeout=5) for f in futures} == {"t-1"}
    assert len(source.requests) == 1


def test_a_token_error_from_the_source_reaches_every_waiter() -> None:
    source = FunctionSource(lambda _request: actors.AuthError(10014, "app secret invalid"))
    with actors.TokenSystem.start(APP, source=source) as system:
        futures = [system.proxy.get_token() for _ in range(3)]
        for future in futures:
            with pytest.raises(actors.AuthError):
                future.get(timeout=5)


def test_a_source_that_returns_no_grant_is_a_failed_attempt() -> None:
    source = FunctionSource(lambda _request: "t-not-a-grant")  # type: ignore[arg-type,return-value]
    policy = actors.RefreshPolicy(max_attempts=1)
    with (
        actors.TokenSystem.start(APP, source=source, policy=policy) as system,
        pytest.raises(actors.UpstreamError, match="not a Grant"),
    ):
        system.proxy.get_token().get(timeout=5)


def test_the_marketplace_flow_runs_through_the_source() -> None:
    def fetch(request: actors.TokenRequest) -> actors.Grant:
        if request.kind is actors.TokenKind.APP:
            assert request.app_ticket == "ticket-1"
            return actors.Grant("a-app", 7200.0)
        assert request.app_token == "a-app"
        return actors.Grant(f"t-{request.tenant_key}", 7200.0)

    source = FunctionSource(fetch)
    with actors.TokenSystem.start(MARKET, source=source) as system:
        system.proxy.set_app_ticket("ticket-1").get(timeout=5)
        assert system.proxy.get_token(tenant_key="tk1").get(timeout=5) == "t-tk1"
        assert system.proxy.get_token(tenant_key="tk2").get(timeout=5) == "t-tk2"
    kinds = [r.kind for r in source.requests]
    assert kinds.count(actors.TokenKind.APP) == 1  # shared by both tenants


def test_a_missing_ticket_makes_the_source_resend_it() -> None:
    pushed: list[actors.TokenSystem] = []

    def resend(app: actors.AppConfig) -> None:
        pushed[0].proxy.set_app_ticket("ticket-2", app_id=app.app_id)

    source = FunctionSource(lambda _request: actors.Grant("a-x", 7200.0), resend=resend)
    with actors.TokenSystem.start(MARKET, source=source) as system:
        pushed.append(system)
        assert system.proxy.get_token(actors.TokenKind.APP).get(timeout=5) == "a-x"
    assert source.resends == ["cli_mkt"]
    assert source.requests[0].app_ticket == "ticket-2"


def test_source_and_session_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        actors.TokenSystem.start(APP, source=FunctionSource.constant(), session=requests.Session())


def test_something_that_is_not_a_source_is_refused() -> None:
    with pytest.raises(ValueError, match="TokenSource"):
        actors.TokenSystem.start(APP, source=object())  # type: ignore[arg-type]


def test_requests_say_why_and_which_token_they_replace() -> None:
    counter = itertools.count(1)
    source = FunctionSource(lambda _r: actors.Grant(f"t-{next(counter)}", 7200.0))
    clock = actors.ManualClock()
    with actors.TokenSystem.start(APP, source=source, clock=clock) as system:
        first = system.proxy.get_token().get(timeout=5)
        clock.advance(7200 - 500)  # inside the prewarm window
        system.settle()
        second = system.proxy.get_token().get(timeout=5)
        assert system.proxy.invalidate(second).get(timeout=5)
        system.settle()
    miss, prewarm, invalidate = source.requests
    assert (miss.cause, miss.replaces) == ("miss", None)
    assert (prewarm.cause, prewarm.replaces) == ("prewarm", first)
    assert (invalidate.cause, invalidate.replaces) == ("invalidate", second)


def test_a_ticket_the_source_already_has_is_used_without_waiting_for_a_push() -> None:
    source = FunctionSource(
        lambda r: actors.Grant(f"a-{r.app_ticket}", 7200.0), resend=lambda _a: "shared"
    )
    with actors.TokenSystem.start(MARKET, source=source, clock=actors.ManualClock()) as system:
        assert system.proxy.get_token(actors.TokenKind.APP).get(timeout=5) == "a-shared"
    assert source.resends == [MARKET.app_id]

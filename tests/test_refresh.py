"""The outcome decision: every code of the protocol table, as a table."""

from __future__ import annotations

import random

import pytest

import actors
from actors._refresh import Accept, Attempt, Fail, Reticket, Retry, decide
from actors.feishu import _protocol as feishu

POLICY = actors.RefreshPolicy(max_attempts=3, retry_base=1.0, retry_cap=8.0)
TENANT = actors.TokenKind.TENANT
APP = actors.TokenKind.APP


def attempt(
    kind: actors.TokenKind = TENANT, attempts: int = 1, *, ticket_current: bool = True
) -> Attempt:
    return Attempt(
        kind=kind, attempts=attempts, started_at=0.0, now=1.0, ticket_current=ticket_current
    )


def error_for(code: int, status: int = 200) -> Exception:
    """The error the client raises for ``code``, through the same table it reads."""
    rule = feishu.rule_for(code, status)
    if rule is feishu.Rule.PERMANENT:
        return actors.AuthError(code, "no")
    if rule is feishu.Rule.TICKET_INVALID:
        return actors.AppTicketError("cli_x", "rejected")
    if rule is feishu.Rule.RATE_LIMITED:
        return actors.RateLimitedError(code, status, 1, retry_after=5.0)
    return actors.UpstreamError(code, status, 1)


# Every non-zero code of the protocol table, with what a tenant-token refresh does about it on
# its first failed attempt.
EXPECTED: dict[int, tuple[type, bool]] = {
    10003: (Fail, False),
    10014: (Fail, False),
    99991543: (Fail, False),
    10012: (Fail, False),  # on a tenant refresh a ticket error is final (the app-token step failed)
    99991400: (Retry, False),
    99991663: (Retry, True),  # the app token it carried is stale: drop it, retry
    99991664: (Retry, True),
    99991671: (Retry, True),
    99991661: (Retry, False),  # not an auth-endpoint answer: transient like any unknown code
    99991672: (Retry, False),
    99991679: (Retry, False),
}


def test_the_table_covers_every_code_of_the_protocol() -> None:
    assert set(EXPECTED) == set(feishu.CODES) - {0}


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED.items()))
def test_each_code_of_the_protocol_table_leads_to_its_decision(
    code: int, expected: tuple[type, bool]
) -> None:
    kind, drops_app_token = expected
    decision = decide(error_for(code), attempt(), POLICY, random.Random(1))
    assert type(decision) is kind
    assert getattr(decision, "drop_app_token", False) is drops_app_token


def test_a_servable_grant_is_accepted() -> None:
    grant = actors.Grant("t-x", 7200.0)
    # The token expires that long after its request left, whenever the answer came back.
    assert decide(grant, attempt(), POLICY, random.Random(1)) == Accept(grant, expires_at=7200.0)


def test_a_grant_that_expires_within_the_safety_margin_is_a_failed_attempt() -> None:
    grant = actors.Grant("t-x", POLICY.safety_margin)
    decision = decide(grant, attempt(), POLICY, random.Random(1))
    assert isinstance(decision, Retry)
    assert isinstance(decision.error, actors.UpstreamError)
    assert "safety margin" in str(decision.error)


def test_transient_errors_fail_after_max_attempts_with_the_attempt_count() -> None:
    decision = decide(
        actors.UpstreamError(None, 502, 1), attempt(attempts=3), POLICY, random.Random(1)
    )
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, actors.UpstreamError)
    assert decision.error.attempts == 3


def test_an_exhausted_token_invalid_answer_still_drops_the_app_token() -> None:
    error = actors.UpstreamError(99991664, 200, 1)
    decision = decide(error, attempt(attempts=3), POLICY, random.Random(1))
    assert isinstance(decision, Fail)
    assert decision.drop_app_token


def test_backoff_honours_the_rate_limit_reset() -> None:
    error = actors.RateLimitedError(99991400, 429, 1, retry_after=5.0)
    decision = decide(error, attempt(), POLICY, random.Random(1))
    assert isinstance(decision, Retry)
    assert decision.delay >= 5.0


@pytest.mark.parametrize("reset", [1e10, 86400.0, float("inf")])
def test_a_huge_rate_limit_reset_waits_no_longer_than_the_documented_ceiling(reset: float) -> None:
    error = actors.RateLimitedError(99991400, 429, 1, retry_after=reset)
    decision = decide(error, attempt(), POLICY, random.Random(1))
    assert isinstance(decision, Retry)
    assert decision.delay == feishu.MAX_RETRY_AFTER


@pytest.mark.parametrize("expire", [float("nan"), float("inf"), -1.0, 0.0, 1e10, 86401.0])
def test_a_grant_with_an_unusable_lifetime_is_a_failed_attempt(expire: float) -> None:
    decision = decide(actors.Grant("t-x", expire), attempt(), POLICY, random.Random(1))
    assert isinstance(decision, Retry)
    assert "unusable token lifetime" in str(decision.error)


def test_backoff_is_full_jitter_under_the_cap() -> None:
    delays = [
        decide(actors.UpstreamError(None, 500, 1), attempt(attempts=2), POLICY, random.Random(s))
        for s in range(50)
    ]
    assert all(isinstance(d, Retry) and 0 <= d.delay <= 2.0 for d in delays)


@pytest.mark.parametrize("current", [True, False])
def test_a_rejected_ticket_is_dropped_only_if_no_newer_one_arrived(current: bool) -> None:
    error = actors.AppTicketError("cli_x", "rejected")
    decision = decide(error, attempt(APP, ticket_current=current), POLICY, random.Random(1))
    assert decision == Reticket(error, stale=current)


def test_a_ticket_rejected_on_every_attempt_fails() -> None:
    error = actors.AppTicketError("cli_x", "rejected")
    assert decide(error, attempt(APP, attempts=3), POLICY, random.Random(1)) == Fail(error)


@pytest.mark.parametrize(
    "error", [actors.AuthError(10014, "bad"), actors.SystemStoppedError(), ValueError("x")]
)
def test_errors_that_retrying_cannot_fix_fail_at_once(error: Exception) -> None:
    assert decide(error, attempt(), POLICY, random.Random(1)) == Fail(error)

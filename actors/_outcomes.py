"""What to do with the outcome of one upstream attempt: a pure function, tested as a table.

The TokenActor carries the decision out (cache, retry timer, ticket resend, waiters); this
module only decides. A new Feishu error code is a row in ``actors._feishu`` and, if it needs a
new reaction, a case here.
"""

from __future__ import annotations

import dataclasses
import random

from actors import _feishu as feishu
from actors._config import RefreshPolicy, TokenKind
from actors._errors import AppTicketError, RateLimitedError, UpstreamError
from actors._source import Grant

__all__ = ["Accept", "Attempt", "Decision", "Fail", "Reticket", "Retry", "decide"]


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """The facts about one finished attempt that the decision depends on."""

    kind: TokenKind
    attempts: int  # upstream requests made by this refresh, this one included
    started_at: float  # when the request left (the token cannot outlive that)
    now: float
    ticket_current: bool = True  # app token: the ticket sent is still the newest one we have


@dataclasses.dataclass(frozen=True, slots=True)
class Accept:
    """Cache the grant; it expires at ``started_at + grant.expire``."""

    grant: Grant


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Try again after ``delay`` seconds (the attempt failed transiently)."""

    error: Exception
    delay: float
    drop_app_token: bool = False  # the marketplace app token the request carried is stale


@dataclasses.dataclass(frozen=True, slots=True)
class Reticket:
    """Feishu rejected the app_ticket (10012). ``stale``: it is still our newest one, so drop it
    and ask for a new one; otherwise a newer ticket arrived meanwhile: try it at once."""

    error: AppTicketError
    stale: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Fail:
    """Give up this refresh: every waiter gets ``error``."""

    error: Exception
    drop_app_token: bool = False


Decision = Accept | Retry | Reticket | Fail


def decide(
    result: Grant | Exception, attempt: Attempt, policy: RefreshPolicy, rng: random.Random
) -> Decision:
    if isinstance(result, Grant):
        if not feishu.usable_expire(result.expire):
            # Any source's answer is checked, not only Feishu's: NaN, infinite, negative or
            # absurd lifetimes are a failed attempt, never a token.
            detail = f"unusable token lifetime {result.expire!r} (must be 0 < expire <= 1 day)"
            result = UpstreamError(0, None, 1, detail=detail)
        elif attempt.started_at + result.expire - policy.safety_margin > attempt.now:
            return Accept(result)
        else:
            # Never servable: caching it would only schedule an immediate refresh, again and
            # again. A failed attempt instead (retried with backoff, then reported).
            detail = f"token expires within the safety margin ({result.expire:g}s left)"
            result = UpstreamError(0, None, 1, detail=detail)
    exhausted = attempt.attempts >= policy.max_attempts
    if isinstance(result, AppTicketError) and attempt.kind is TokenKind.APP:
        if exhausted:  # every ticket we got was refused
            return Fail(result)
        return Reticket(result, stale=attempt.ticket_current)
    if not isinstance(result, UpstreamError):
        return Fail(result)  # permanent: AuthError, a missing ticket's deadline, stopping
    drop = (
        attempt.kind is TokenKind.TENANT
        and feishu.rule_for(result.code, result.status) is feishu.Rule.TOKEN_INVALID
    )
    if exhausted:
        return Fail(result.after_attempts(attempt.attempts), drop_app_token=drop)
    retry_after = None
    if isinstance(result, RateLimitedError) and result.retry_after is not None:
        retry_after = min(result.retry_after, feishu.MAX_RETRY_AFTER)
    delay = policy.backoff(attempt.attempts, rng, retry_after=retry_after)
    return Retry(result, delay, drop_app_token=drop)

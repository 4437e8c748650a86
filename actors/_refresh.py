"""The refresh cycle of the TokenActor's keys: start -> attempt -> (queue) -> worker ->
FetchDone -> decide -> store | retry | reticket | fail; plus prewarm timers, idle eviction,
invalidation and the app_ticket waits of marketplace apps.

Runs on the TokenActor's thread only (the actor calls it from its message handlers), so it needs
no locks. It never blocks: upstream calls go to ``Upstream``'s workers, delays are ``Timers``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping

from loguru import logger

from actors import _messages as m
from actors._cache import Entry, RefreshState, TokenCache
from actors._clock import Clock
from actors._config import AppConfig, AppType, RefreshPolicy, TokenKey, TokenKind
from actors._errors import (
    AppTicketError,
    AuthError,
    RateLimitedError,
    SystemStoppedError,
    UpstreamError,
    mask_token,
    plain_traceback,
)
from actors._events import EventHub, RefreshFailed, TokenRefreshed
from actors._messages import Continuation, Waiter
from actors._metrics import Count, MetricsRecorder
from actors._scheduler import Timers
from actors._source import Grant, TokenRequest
from actors._upstream import Upstream
from actors.feishu import _protocol as feishu

__all__ = [
    "Accept",
    "Attempt",
    "Decision",
    "Fail",
    "Refresher",
    "Reticket",
    "Retry",
    "TicketBook",
    "decide",
]


_log = logger.bind(component="TokenActor")


class Refresher:
    """Refreshes the cache's entries; the TokenActor routes its timer and fetch messages here."""

    def __init__(
        self,
        *,
        apps: Mapping[str, AppConfig],
        policy: RefreshPolicy,
        clock: Clock,
        cache: TokenCache,
        upstream: Upstream,
        timers: Timers,
        events: EventHub,
        metrics: MetricsRecorder,
        get: Callable[[TokenKey, Waiter], None],
    ) -> None:
        self._apps = apps
        self._policy = policy
        self._clock = clock
        self._cache = cache
        self._upstream = upstream
        self._timers = timers
        self._tickets = TicketBook(timers, wait=policy.ticket_wait)
        self._events = events
        self.metrics = metrics
        self._get = get  # the marketplace tenant flow gets its app token like any caller
        self._rng = random.Random(policy.seed)

    def answer(
        self, waiters: list[Waiter], *, token: str | None = None, error: Exception | None = None
    ) -> None:
        """Answer every waiter; one that raises must not leave the others unanswered."""
        now = self._clock.now()
        for waiter in waiters:
            try:
                if token is not None:
                    if waiter.counted:
                        self.metrics.get_latency.record(now - waiter.started)
                    waiter.resolve(token)
                else:
                    waiter.fail(error or SystemStoppedError())
            except Exception as exc:
                _log.error("a waiter could not be answered:\n{}", plain_traceback(exc))

    # --- refresh cycle: start -> attempt -> (queue) -> worker -> FetchDone -> decide -----------

    def start(self, entry: Entry, cause: str) -> None:
        entry.begin(cause)
        self.metrics.fetches_by_cause[cause] += 1
        self._attempt(entry)

    def _attempt(self, entry: Entry) -> None:
        app = entry.app
        if app.app_type is AppType.SELF_BUILT:
            self._enqueue(entry)
        elif entry.key.kind is TokenKind.APP:
            ticket = entry.ticket_used = self._tickets.ticket(app.app_id)
            if ticket is None:
                self._await_ticket(entry)
            else:
                self._enqueue(entry, app_ticket=ticket)
        else:
            # Marketplace tenant tokens take two steps; the app token comes from this same
            # cache (a hit, or one shared fetch for every tenant of the app).
            entry.enter(RefreshState.AWAITING_APP_TOKEN)
            self._get(
                app.key(TokenKind.APP),
                Continuation(
                    self._clock.now(),
                    on_token=lambda token: self._enqueue(entry, app_token=token),
                    on_error=lambda error: self._finish_failure(entry, error),
                ),
            )

    def _enqueue(
        self, entry: Entry, *, app_ticket: str | None = None, app_token: str | None = None
    ) -> None:
        key = entry.key
        request = TokenRequest(
            app=entry.app,
            kind=key.kind,
            tenant_key=key.tenant_key,
            app_ticket=app_ticket,
            app_token=app_token,
            cause=entry.cause,
            replaces=entry.token if entry.token is not None else entry.dropped_token,
        )
        entry.enter(RefreshState.FETCHING)
        # Keys with callers waiting go first; prewarms follow in order of their hard deadline.
        deadline = float("-inf") if entry.waiters else entry.expires_at - self._policy.safety_margin
        self._refused(self._upstream.enqueue(request, deadline))

    def _refused(self, keys: list[TokenKey]) -> None:
        for key in keys:
            entry = self._cache.get(key)
            if entry is not None:
                self._finish_failure(entry, SystemStoppedError())

    def on_fetch_done(self, done: m.FetchDone) -> None:
        try:
            entry = self._cache.get(done.key)
            if entry is not None and entry.state is RefreshState.FETCHING:
                self._fetch_result(entry, done)
        finally:  # the slot is free whatever happened to the result
            self._refused(self._upstream.finished())

    def _fetch_result(self, entry: Entry, done: m.FetchDone) -> None:
        self.metrics.fetch_latency.record(done.latency)
        entry.attempts += 1
        key = entry.key
        fact = Attempt(
            kind=key.kind,
            attempts=entry.attempts,
            started_at=done.started_at,
            now=self._clock.now(),
            ticket_current=self._tickets.ticket(key.app_id) == entry.ticket_used,
        )
        decision = decide(done.result, fact, self._policy, self._rng)
        if isinstance(decision, Accept):
            self.metrics.count(key.app_id, key.kind, Count.fetch_success)
            self._store(entry, decision.grant.token, done.started_at + decision.grant.expire)
            return
        self.metrics.count(key.app_id, key.kind, Count.fetch_failure)
        self.metrics.failures_by_error[type(decision.error).__name__] += 1
        match decision:
            case Retry(error, delay, drop_app_token):
                self._drop_app_token(entry, drop_app_token)
                self.metrics.add(Count.retries)
                _log.bind(key=key.describe(), attempt=entry.attempts).info(
                    "token fetch failed ({}), retrying in {:.2f}s", error, delay
                )
                self._events.publish(RefreshFailed.of(key, error, will_retry=True))
                entry.enter(RefreshState.RETRY_SCHEDULED)
                entry.retry_timer = self._timers.at(
                    self._clock.now() + delay, lambda tid: m.RetryDue(key, tid)
                )
            case Reticket(error, stale):
                self._events.publish(RefreshFailed.of(key, error, will_retry=True))
                if stale:  # 10012 for our newest ticket: drop it and ask for a new one
                    self._tickets.discard(key.app_id, entry.ticket_used)
                self._attempt(entry)  # with a newer ticket, or waiting for one
            case Fail(error, drop_app_token):
                self._drop_app_token(entry, drop_app_token)
                self._finish_failure(entry, error)

    def _store(self, entry: Entry, token: str, expires_at: float) -> None:
        same = entry.store(token, expires_at)
        self.metrics.add(Count.same_token_refreshes, same)
        now = self._clock.now()
        self._set_prewarm(entry, self._policy.prewarm_due(expires_at, now, self._rng))
        _log.bind(key=entry.key.describe(), cause=entry.cause, same_token=same).info(
            "token refreshed: {} expires in {:.0f}s", mask_token(token), expires_at - now
        )
        self._events.publish(TokenRefreshed.of(entry.key, expires_at, entry.cause))
        self.answer(entry.take_waiters(), token=token)

    def _set_prewarm(self, entry: Entry, due: float | None) -> None:
        """Replace the key's prewarm timer (None: just cancel it), so at most one is pending."""
        self._timers.cancel(entry.prewarm_timer)
        entry.prewarm_timer = None
        if due is not None:
            entry.prewarm_timer = self._timers.at(due, lambda tid: m.Prewarm(entry.key, tid))

    def on_retry_due(self, key: TokenKey, timer_id: int) -> None:
        entry = self._cache.get(key)
        if entry is not None and entry.retry_timer == timer_id:
            entry.retry_timer = None
            self._attempt(entry)

    def _finish_failure(self, entry: Entry, error: Exception) -> None:
        entry.end_refresh()
        self.answer(entry.take_waiters(), error=error)
        self._events.publish(RefreshFailed.of(entry.key, error, will_retry=False))
        _log.bind(key=entry.key.describe(), cause=entry.cause).warning(
            "token refresh failed: {}", error
        )
        now = self._clock.now()
        hard = entry.expires_at - self._policy.safety_margin
        if entry.token is not None and now < hard:
            if not isinstance(error, SystemStoppedError):
                # Stale-while-revalidate: keep serving the valid token and try again later.
                self._set_prewarm(entry, min(now + self._policy.retry_cap, now + (hard - now) / 2))
        elif not entry.busy and not entry.waiters:
            # Nothing servable and nobody waiting: keep no state for the key (a flood of gets
            # for bogus tenant keys must not pile up entries). The next get starts afresh.
            self._set_prewarm(entry, None)
            self._cache.remove(entry)

    # --- prewarm, idle eviction, invalidation ----------------------------------------------------

    def on_prewarm(self, key: TokenKey, timer_id: int) -> None:
        entry = self._cache.get(key)
        if entry is None or entry.prewarm_timer != timer_id:
            return
        entry.prewarm_timer = None
        if entry.busy:
            return
        if self._clock.now() - self._cache.last_read(entry) > self._policy.idle_ttl:
            # Nobody has read this key for a long time: stop refreshing it forever.
            self._cache.remove(entry)
            self.metrics.add(Count.idle_evictions)
            return
        self.metrics.add(Count.prewarms)
        self.start(entry, "prewarm")

    def invalidate(self, token: str) -> bool:
        entry = self._cache.holding(token)
        if entry is None:
            return False  # an older token, or one this system never issued: nothing to drop
        self._drop(entry)
        self.metrics.add(Count.invalidations)
        if not entry.busy:
            self.start(entry, "invalidate")
        return True

    def _drop(self, entry: Entry) -> None:
        entry.drop_token()
        self._set_prewarm(entry, None)

    def _drop_app_token(self, entry: Entry, drop: bool) -> None:
        """A marketplace tenant request was refused for its app token: stop serving that one."""
        app_entry = self._cache.get(entry.app.key(TokenKind.APP)) if drop else None
        if app_entry is not None:
            self._drop(app_entry)

    # --- app_ticket ----------------------------------------------------------------------------

    def _await_ticket(self, entry: Entry) -> None:
        entry.enter(RefreshState.AWAITING_TICKET)
        app = entry.app
        if not self._tickets.start_wait(app.app_id, self._clock.now()):
            return  # already asked; the pushed ticket or the deadline ends this wait too
        self.metrics.add(Count.ticket_resends)
        if not self._upstream.resend_ticket(app):
            self._finish_failure(entry, SystemStoppedError())

    def on_resend_done(self, app_id: str, error: Exception | None, ticket: str | None) -> None:
        if ticket is not None:  # the source had one already (a shared store): no need to wait
            self.on_set_ticket(app_id, ticket)
            return
        if error is None:
            return
        _log.bind(app_id=app_id).warning("app_ticket resend failed: {}", error)
        if isinstance(error, AuthError) and self._tickets.abandon(app_id):
            # Wrong credentials: no ticket will ever come, so do not make callers wait for it.
            self._fail_app_token_wait(app_id, error)

    def on_set_ticket(self, app_id: str, ticket: str) -> None:
        if self._tickets.store(app_id, ticket):
            entry = self._app_token_entry(app_id)
            if entry is not None and entry.state is RefreshState.AWAITING_TICKET:
                self._attempt(entry)

    def _fail_app_token_wait(self, app_id: str, error: Exception) -> None:
        entry = self._app_token_entry(app_id)
        if entry is not None and entry.state is RefreshState.AWAITING_TICKET:
            self._finish_failure(entry, error)

    def _app_token_entry(self, app_id: str) -> Entry | None:
        return self._cache.get(self._apps[app_id].key(TokenKind.APP))

    def on_ticket_deadline(self, app_id: str, timer_id: int) -> None:
        if self._tickets.deadline_passed(app_id, timer_id):
            self._fail_app_token_wait(app_id, AppTicketError(app_id, self._tickets.describe_wait()))


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


class TicketBook:
    def __init__(self, timers: Timers, *, wait: float) -> None:
        self._timers = timers
        self._wait = wait
        self._tickets: dict[str, str] = {}
        self._deadlines: dict[str, int] = {}  # app_id -> timer id of its wait's deadline

    def ticket(self, app_id: str) -> str | None:
        return self._tickets.get(app_id)

    def awaiting(self, app_id: str) -> bool:
        return app_id in self._deadlines

    def store(self, app_id: str, ticket: str) -> bool:
        """Keep ``ticket`` as the app's newest; True if a wait for it has just ended."""
        self._tickets[app_id] = ticket
        return self.abandon(app_id)

    def discard(self, app_id: str, ticket: str | None) -> None:
        """Feishu rejected ``ticket``: forget it unless a newer one replaced it meanwhile."""
        if ticket is not None and self._tickets.get(app_id) == ticket:
            del self._tickets[app_id]

    def start_wait(self, app_id: str, now: float) -> bool:
        """Start waiting for a pushed ticket; False if the app already waits for one."""
        if app_id in self._deadlines:
            return False
        self._deadlines[app_id] = self._timers.at(
            now + self._wait, lambda timer_id: m.TicketDeadline(app_id, timer_id)
        )
        return True

    def deadline_passed(self, app_id: str, timer_id: int) -> bool:
        """The deadline timer fired; True if it is the app's current wait (which now ends)."""
        if self._deadlines.get(app_id) != timer_id:
            return False
        del self._deadlines[app_id]
        return True

    def abandon(self, app_id: str) -> bool:
        """Stop waiting (a ticket came, or none ever will); True if the app was waiting."""
        timer_id = self._deadlines.pop(app_id, None)
        self._timers.cancel(timer_id)
        return timer_id is not None

    def describe_wait(self) -> str:
        return f"none arrived within {self._wait:g}s of asking Feishu to resend it"

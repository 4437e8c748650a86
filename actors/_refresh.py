"""The TokenActor's state and what it does with it: the cache of entries, the gets it answers
from them, and the refresh cycle of each key: start -> attempt -> (queue) -> worker -> FetchDone
-> decide -> store | retry | reticket | fail; plus each key's one timer (prewarm, retry backoff
or app_ticket deadline), idle eviction, invalidation and marketplace app_tickets.

:class:`Refresher` is the one owner of the cache and its entries. It runs on the TokenActor's
thread only (the actor's handlers call it; it never calls back), so it needs no locks, and it
never blocks: upstream calls go to ``Upstream``'s workers and come back as FetchDone mail,
delays are ``Timers`` whose Wake mail comes back the same way. :func:`decide` says, purely, what
one finished attempt means.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any

import pykka
from loguru import logger

from actors import _messages as m
from actors._cache import CallerStats, Entry, ReadSnapshot, RefreshState, TokenCache, serve_until
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
from actors._metrics import Count, MetricsRecorder, TokenMetrics
from actors._scheduler import Timers
from actors._source import Grant, TokenSource
from actors._upstream import Upstream, WorkerPool
from actors.feishu import _protocol as feishu

__all__ = ["Accept", "Attempt", "Decision", "Fail", "Refresher", "Reticket", "Retry", "decide"]


_log = logger.bind(component="TokenActor")


class Refresher:
    """The cache, its entries and their refreshes; the TokenActor hands it its mail."""

    def __init__(
        self,
        *,
        apps: Mapping[str, AppConfig],
        policy: RefreshPolicy,
        clock: Clock,
        source: TokenSource,
        pool: WorkerPool,
        timers: Timers,
        me: pykka.ActorRef[Any],
        events: EventHub,
        snapshot: ReadSnapshot | None,
    ) -> None:
        self._apps = apps
        self._policy = policy
        self._clock = clock
        self._cache = TokenCache(safety_margin=policy.safety_margin, snapshot=snapshot)
        self._snapshot = snapshot
        self._upstream = Upstream(
            source=source, pool=pool, clock=clock, cap=policy.max_concurrent_fetches, ref=me
        )
        self._timers = timers
        self._tickets: dict[str, str] = {}  # marketplace app_id -> its newest app_ticket
        self._events = events
        self._metrics = MetricsRecorder()  # written here only
        self._rng = random.Random(policy.seed)

    # --- gets --------------------------------------------------------------------------------

    def get(self, key: TokenKey, waiter: Waiter) -> None:
        """Answer from the cache, or park ``waiter`` on the key's refresh (starting one)."""
        now = self._clock.now()
        entry = self._cache.entry(key, self._apps[key.app_id])
        entry.last_read = now
        if entry.servable(now):
            if waiter.counted:
                self._metrics.count(key.app_id, key.kind, Count.hits)
                self._metrics.add(Count.stale_served, entry.busy)
            self._answer([waiter], token=entry.token)
            return
        entry.waiters.append(waiter)
        outcome = Count.coalesced if entry.busy else Count.misses
        if waiter.counted:
            self._metrics.count(key.app_id, key.kind, outcome)
        _log.trace("get {}: {}", key.describe(), outcome.name)
        if not entry.busy:
            self._start(entry, "miss")

    def _answer(
        self, waiters: list[Waiter], *, token: str | None = None, error: Exception | None = None
    ) -> None:
        answer(waiters, self._clock.now(), self._metrics, token=token, error=error)

    def stop(self) -> None:
        """The actor stops: every parked waiter fails, nothing queued starts."""
        for entry in self._cache:
            self._answer(entry.take_waiters(), error=SystemStoppedError())
        self._upstream.clear()

    @property
    def fetches(self) -> int:  # queued or in flight
        return self._upstream.in_flight + self._upstream.queued

    def metrics(self, *, mailbox_depth: int, callers: CallerStats) -> TokenMetrics:
        now = self._clock.now()
        expiries = [e.expires_at - now for e in self._cache if e.token is not None]
        fast_hits = self._snapshot.hits() if self._snapshot is not None else {}
        return self._metrics.snapshot(
            in_flight=self._upstream.in_flight,
            queued=self._upstream.queued,
            mailbox_depth=mailbox_depth,
            fast_hits=fast_hits,
            fast_stale=self._snapshot.stale_hits() if self._snapshot is not None else 0,
            caller_coalesced=callers.coalesced_counts(),
            caller_latency=callers.latency(fast_hits=sum(fast_hits.values())),
            keys_cached=len(expiries),
            keys_tracked=len(self._cache),
            soonest_expiry_in=min(expiries) if expiries else None,
        )

    # --- refresh cycle: start -> attempt -> (queue) -> worker -> FetchDone -> decide -----------

    def _start(self, entry: Entry, cause: str) -> None:
        entry.begin(cause)
        self._metrics.fetches_by_cause[cause] += 1
        self._attempt(entry)

    def _attempt(self, entry: Entry) -> None:
        app = entry.app
        if app.app_type is AppType.SELF_BUILT:
            self._enqueue(entry)
        elif entry.key.kind is TokenKind.APP:
            ticket = entry.ticket_used = self._tickets.get(app.app_id)
            if ticket is None:
                self._await_ticket(entry)
            else:
                self._enqueue(entry, app_ticket=ticket)
        else:
            # Marketplace tenant tokens take two steps; the app token comes from this same
            # cache (a hit, or one shared fetch for every tenant of the app).
            entry.enter(RefreshState.AWAITING_APP_TOKEN)
            self.get(
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
        request = entry.request(app_ticket=app_ticket, app_token=app_token)
        entry.enter(RefreshState.FETCHING)
        # Keys with callers waiting go first; prewarms follow in order of their hard deadline.
        deadline = float("-inf") if entry.waiters else entry.serve_until
        self._refused(self._upstream.enqueue(request, deadline))

    def _refused(self, keys: list[TokenKey]) -> None:
        for key in keys:
            entry = self._cache.get(key)
            if entry is not None:
                self._finish_failure(entry, SystemStoppedError())

    def fetch_done(self, done: m.FetchDone) -> None:
        try:
            entry = self._cache.get(done.key)
            if entry is not None and entry.state is RefreshState.FETCHING:
                self._fetch_result(entry, done)
        finally:  # the slot is free whatever happened to the result
            self._refused(self._upstream.finished())

    def _fetch_result(self, entry: Entry, done: m.FetchDone) -> None:
        self._metrics.fetch_latency.record(done.latency)
        entry.attempts += 1
        key = entry.key
        fact = Attempt(
            kind=key.kind,
            attempts=entry.attempts,
            started_at=done.started_at,
            now=self._clock.now(),
            ticket_current=self._tickets.get(key.app_id) == entry.ticket_used,
        )
        decision = decide(done.result, fact, self._policy, self._rng)
        if isinstance(decision, Accept):
            self._metrics.count(key.app_id, key.kind, Count.fetch_success)
            self._store(entry, decision.grant.token, decision.expires_at, fact.now)
            return
        self._metrics.count(key.app_id, key.kind, Count.fetch_failure)
        self._metrics.failures_by_error[type(decision.error).__name__] += 1
        match decision:
            case Retry(error, delay, drop_app_token):
                self._drop_app_token(entry, drop_app_token)
                self._metrics.add(Count.retries)
                _log.info(
                    "token fetch for {} failed ({}), retrying in {:.2f}s",
                    key.describe(),
                    error,
                    delay,
                )
                self._events.publish(RefreshFailed.of(key, error, will_retry=True))
                entry.enter(RefreshState.RETRY_SCHEDULED)
                self._set_timer(entry, fact.now + delay)
            case Reticket(error, stale):
                self._events.publish(RefreshFailed.of(key, error, will_retry=True))
                if stale:  # 10012 for our newest ticket: drop it and ask for a new one
                    self._tickets.pop(key.app_id, None)
                self._attempt(entry)  # with a newer ticket, or waiting for one
            case Fail(error, drop_app_token):
                self._drop_app_token(entry, drop_app_token)
                self._finish_failure(entry, error)

    def _store(self, entry: Entry, token: str, expires_at: float, now: float) -> None:
        same = entry.store(token, expires_at)
        due = self._policy.prewarm_due(  # as of the answer, not later
            expires_at, serve_until=entry.serve_until, now=now, rng=self._rng
        )
        # Callers first: the timer, the log and the events can wait for them.
        self._answer(entry.take_waiters(), token=token)
        self._metrics.add(Count.same_token_refreshes, same)
        self._set_timer(entry, due)
        _log.info(
            "token refreshed: {} {} expires in {:.0f}s (cause {}, same token {})",
            entry.key.describe(),
            mask_token(token),
            expires_at - now,
            entry.cause,
            same,
        )
        self._events.publish(TokenRefreshed.of(entry.key, expires_at, entry.cause))

    def _set_timer(self, entry: Entry, due: float | None) -> None:
        """Replace the key's one timer (None: just cancel it); one Schedule, no Cancel."""
        if due is None:
            self._timers.cancel(entry.timer)
            entry.timer = None
        else:
            key = entry.key
            entry.timer = self._timers.at(due, lambda tid: m.Wake(key, tid), replaces=entry.timer)

    def wake(self, key: TokenKey, timer_id: int) -> None:
        """The key's timer is due; its refresh state says which one it was."""
        entry = self._cache.get(key)
        if entry is None or entry.timer != timer_id:
            return  # replaced, cancelled or its key gone
        entry.timer = None
        if entry.state is RefreshState.RETRY_SCHEDULED:
            self._attempt(entry)
        elif entry.state is RefreshState.AWAITING_TICKET:
            wait = self._policy.ticket_wait
            detail = f"none arrived within {wait:g}s of asking Feishu to resend it"
            self._finish_failure(entry, AppTicketError(key.app_id, detail))
        elif entry.state is RefreshState.IDLE:
            self._prewarm(entry)
        # Fetching (or waiting for its app token): a prewarm that a miss overtook; nothing due.

    def _finish_failure(self, entry: Entry, error: Exception) -> None:
        now = self._clock.now()  # before anyone is answered: they may move a manual clock
        entry.end_refresh()
        self._answer(entry.take_waiters(), error=error)
        self._events.publish(RefreshFailed.of(entry.key, error, will_retry=False))
        _log.warning(
            "token refresh for {} ({}) failed: {}", entry.key.describe(), entry.cause, error
        )
        if entry.servable(now):
            if not isinstance(error, SystemStoppedError):
                # Stale-while-revalidate: keep serving the valid token and try again later.
                hard = entry.serve_until
                self._set_timer(entry, min(now + self._policy.retry_cap, now + (hard - now) / 2))
        else:
            self._set_timer(entry, None)
            if not entry.busy and not entry.waiters:
                # Nothing servable and nobody waiting: keep no state for the key (a flood of
                # gets for bogus tenant keys must not pile up entries). The next get starts afresh.
                self._cache.remove(entry)

    # --- prewarm, idle eviction, invalidation ----------------------------------------------------

    def _prewarm(self, entry: Entry) -> None:
        if self._clock.now() - self._cache.last_read(entry) > self._policy.idle_ttl:
            # Nobody has read this key for a long time: stop refreshing it forever.
            self._cache.remove(entry)
            self._metrics.add(Count.idle_evictions)
            return
        self._metrics.add(Count.prewarms)
        self._start(entry, "prewarm")

    def invalidate(self, token: str) -> bool:
        entry = self._cache.holding(token)
        if entry is None:
            return False  # an older token, or one this system never issued: nothing to drop
        entry.drop_token()
        self._metrics.add(Count.invalidations)
        if not entry.busy:  # busy: the refresh under way (and its timer) serves it too
            self._start(entry, "invalidate")  # its end replaces the pending prewarm
        return True

    def _drop_app_token(self, entry: Entry, drop: bool) -> None:
        """A marketplace tenant request was refused for its app token: stop serving that one."""
        app_entry = self._cache.get(entry.app.key(TokenKind.APP)) if drop else None
        if app_entry is not None:
            app_entry.drop_token()
            if not app_entry.busy:  # its prewarm: nothing to refresh until a get asks
                self._set_timer(app_entry, None)

    # --- app_ticket ----------------------------------------------------------------------------

    def _await_ticket(self, entry: Entry) -> None:
        """Ask Feishu to push the app's ticket again; the key's timer is the wait's deadline."""
        entry.enter(RefreshState.AWAITING_TICKET)
        self._set_timer(entry, self._clock.now() + self._policy.ticket_wait)
        self._metrics.add(Count.ticket_resends)
        if not self._upstream.resend_ticket(entry.app):
            self._finish_failure(entry, SystemStoppedError())

    def resend_done(self, app_id: str, error: Exception | None, ticket: str | None) -> None:
        if ticket is not None:  # the source had one already (a shared store): no need to wait
            self.set_ticket(app_id, ticket)
            return
        if error is None:
            return
        _log.warning("app_ticket resend for {} failed: {}", app_id, error)
        entry = self._waiting_for_ticket(app_id)
        if isinstance(error, AuthError) and entry is not None:
            # Wrong credentials: no ticket will ever come, so do not make callers wait for it.
            self._finish_failure(entry, error)

    def set_ticket(self, app_id: str, ticket: str) -> None:
        self._tickets[app_id] = ticket
        entry = self._waiting_for_ticket(app_id)
        if entry is not None:
            self._attempt(entry)  # its deadline timer goes stale: the state moves on

    def _waiting_for_ticket(self, app_id: str) -> Entry | None:
        entry = self._cache.get(self._apps[app_id].key(TokenKind.APP))
        return entry if entry is not None and entry.state is RefreshState.AWAITING_TICKET else None


def answer(
    waiters: list[Waiter],
    now: float,
    metrics: MetricsRecorder,
    *,
    token: str | None = None,
    error: Exception | None = None,
) -> None:
    """Answer every waiter; one that raises must not leave the others unanswered."""
    for waiter in waiters:
        try:
            if token is not None:
                if waiter.counted:
                    metrics.get_latency.record(now - waiter.started)
                waiter.resolve(token)
            else:
                waiter.fail(error or SystemStoppedError())
        except Exception as exc:
            _log.error("a waiter could not be answered:\n{}", plain_traceback(exc))


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
    """Cache the grant until ``expires_at``: ``started_at + grant.expire``, since a token
    cannot outlive the moment its request left."""

    grant: Grant
    expires_at: float


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
        expires_at = _expires_at(result, attempt, policy.safety_margin)
        if not isinstance(expires_at, UpstreamError):
            return Accept(result, expires_at)
        result = expires_at
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


def _expires_at(grant: Grant, attempt: Attempt, safety_margin: float) -> float | UpstreamError:
    """When ``grant`` expires, if it is a token to cache; else the failed attempt it is.

    The one check of a fetched lifetime, whichever source answered: NaN, infinite, negative
    or absurd lifetimes are never a token, nor one already within the safety margin (caching
    it would only schedule an immediate refresh, again and again).
    """
    expire = grant.expire
    if not feishu.usable_expire(expire):
        detail = f"unusable token lifetime {expire!r} (must be 0 < expire <= 1 day)"
        return UpstreamError(0, None, 1, detail=detail)
    expires_at = attempt.started_at + expire
    if attempt.now < serve_until(expires_at, safety_margin):
        return expires_at
    detail = f"token expires within the safety margin ({expire:g}s left)"
    return UpstreamError(0, None, 1, detail=detail)

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
import math
import random
import threading
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

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
    ReauthorizationRequired,
    SystemStoppedError,
    UpstreamError,
    mask_token,
    plain_traceback,
    redact,
)
from actors._events import EventHub, ReauthorizationNeeded, RefreshFailed, TokenRefreshed
from actors._messages import Continuation, Waiter
from actors._metrics import Count, MetricsRecorder, TokenMetrics
from actors._scheduler import Timers
from actors._source import Grant, TokenSource
from actors._upstream import Upstream, WorkerPool
from actors.feishu import _protocol as feishu

if TYPE_CHECKING:
    from actors.stores import StoreHealth

__all__ = [
    "Accept",
    "Attempt",
    "Decision",
    "Fail",
    "Outcomes",
    "Refresher",
    "Reticket",
    "Retry",
    "SystemHealth",
    "TicketBook",
    "decide",
]


_log = logger.bind(component="TokenActor")


class _TicketWaits:
    """The Refresher's app_ticket part (marketplace apps): asking Feishu to push the ticket
    again, waiting for it with a deadline, and resuming the app token's refresh when it comes."""

    _apps: Mapping[str, AppConfig]
    _cache: TokenCache
    _policy: RefreshPolicy
    _clock: Clock
    _metrics: MetricsRecorder
    _upstream: Upstream
    _tickets: TicketBook

    def _attempt(self, entry: Entry) -> None:
        raise NotImplementedError

    def _finish_failure(self, entry: Entry, error: Exception) -> None:
        raise NotImplementedError

    def _set_timer(self, entry: Entry, due: float | None) -> None:
        raise NotImplementedError

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
            self.set_ticket(app_id, ticket, None)
            return
        if error is None:
            return
        _log.warning("app_ticket resend for {} failed: {}", app_id, error)
        entry = self._waiting_for_ticket(app_id)
        if isinstance(error, AuthError) and entry is not None:
            # Wrong credentials: no ticket will ever come, so do not make callers wait for it.
            self._finish_failure(entry, error)

    def set_ticket(self, app_id: str, ticket: str, made_at: float | None) -> None:
        if not self._tickets.offer(app_id, ticket, made_at):
            _log.info("an app_ticket for {} made before the one held was ignored", app_id)
            return
        entry = self._waiting_for_ticket(app_id)
        if entry is not None:
            self._attempt(entry)  # its deadline timer goes stale: the state moves on

    def _waiting_for_ticket(self, app_id: str) -> Entry | None:
        entry = self._cache.get(self._apps[app_id].key(TokenKind.APP))
        return entry if entry is not None and entry.state is RefreshState.AWAITING_TICKET else None


class _UserGrants:
    """The Refresher's part for user grants the actor learns of outside a refresh: a login's
    token, a grant found in the store (kept alive from here too), a logout."""

    _apps: Mapping[str, AppConfig]
    _cache: TokenCache
    _policy: RefreshPolicy
    _clock: Clock
    _rng: random.Random

    def _store(self, entry: Entry, token: str, expires_at: float, now: float) -> None:
        raise NotImplementedError

    def _set_timer(self, entry: Entry, due: float | None) -> None:
        raise NotImplementedError

    def _answer(
        self, waiters: list[Waiter], *, token: str | None = None, error: Exception | None = None
    ) -> None:
        raise NotImplementedError

    def adopt(self, key: TokenKey, grant: Grant, started_at: float) -> None:
        """A login redeemed ``grant`` for ``key``'s user: cache it as a refresh's answer."""
        entry = self._cache.entry(key, self._apps[key.app_id])
        entry.last_read = now = self._clock.now()
        entry.cause = "login"
        entry.refresh_until = (
            None if grant.refresh_expire is None else started_at + grant.refresh_expire
        )
        self._store(entry, grant.token, started_at + grant.expire, now)

    def keep(self, key: TokenKey, refresh_until: float) -> None:
        """A stored grant this process has not cached: keep it alive from here too (the
        store's lease lets one process per grant rotate it)."""
        entry = self._cache.entry(key, self._apps[key.app_id])
        if entry.refresh_until is None and not entry.busy and entry.timer is None:
            entry.refresh_until = refresh_until
            now = self._clock.now()
            self._set_timer(entry, self._policy.keepalive_due(refresh_until, now, self._rng))

    def forget(self, key: TokenKey, error: Exception) -> None:
        """The user logged out: nothing of theirs is served or refreshed here any more."""
        entry = self._cache.get(key)
        if entry is not None:
            entry.drop_token()
            self._set_timer(entry, None)
            self._answer(entry.take_waiters(), error=error)
            if not entry.busy:
                self._cache.remove(entry)


class Refresher(_TicketWaits, _UserGrants):
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
        self._tickets = TicketBook()  # marketplace apps' newest app_tickets
        self._outcomes = Outcomes(events, apps=apps, forget_after=policy.idle_ttl)
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

    def health(self, store: StoreHealth | None) -> SystemHealth:
        return self._outcomes.health(self._clock.now(), store)

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
        app, kind = entry.app, entry.key.kind
        if kind is TokenKind.USER or (app.app_type is AppType.SELF_BUILT and kind in _ONE_STEP):
            self._enqueue(entry)
        elif kind is TokenKind.APP:
            ticket = entry.ticket_used = self._tickets.ticket(app.app_id)
            if ticket is None:
                self._await_ticket(entry)
            else:
                self._enqueue(entry, app_ticket=ticket)
        else:
            # Two steps: a marketplace tenant token needs the app token, a jsapi_ticket its
            # tenant's token. That one comes from this same cache (a hit, or one fetch shared
            # by everything that needs it).
            def carried(token: str) -> None:
                if kind is TokenKind.JSAPI_TICKET:
                    self._enqueue(entry, tenant_token=token)
                else:
                    self._enqueue(entry, app_token=token)

            entry.enter(RefreshState.AWAITING_APP_TOKEN)
            self.get(
                _prerequisite(entry.key),
                Continuation(
                    self._clock.now(),
                    on_token=carried,
                    on_error=lambda error: self._finish_failure(entry, error),
                ),
            )

    def _enqueue(
        self,
        entry: Entry,
        *,
        app_ticket: str | None = None,
        app_token: str | None = None,
        tenant_token: str | None = None,
    ) -> None:
        request = entry.request(
            app_ticket=app_ticket, app_token=app_token, tenant_token=tenant_token
        )
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
            ticket_current=self._tickets.ticket(key.app_id) == entry.ticket_used,
        )
        decision = decide(done.result, fact, self._policy, self._rng)
        if isinstance(decision, Accept):
            self._metrics.count(key.app_id, key.kind, Count.fetch_success)
            grant = decision.grant
            if grant.refresh_expire is not None:
                entry.refresh_until = done.started_at + grant.refresh_expire
            self._store(entry, grant.token, decision.expires_at, fact.now)
            return
        self._metrics.count(key.app_id, key.kind, Count.fetch_failure)
        self._metrics.failures_by_error[type(decision.error).__name__] += 1
        match decision:
            case Retry(error, delay, drop_app_token):
                self._drop_app_token(entry, drop_app_token)
                self._metrics.add(Count.retries)
                self._outcomes.retrying(key, error, fact.now, delay=delay)
                entry.enter(RefreshState.RETRY_SCHEDULED)
                self._set_timer(entry, fact.now + delay)
            case Reticket(error, stale):
                self._outcomes.retrying(key, error, fact.now)
                if stale:  # 10012 for our newest ticket: drop it and ask for a new one
                    self._tickets.refuse(key.app_id)
                self._attempt(entry)  # with a newer ticket, or waiting for one
            case Fail(error, drop_app_token):
                self._drop_app_token(entry, drop_app_token)
                self._finish_failure(entry, error)

    def _store(self, entry: Entry, token: str, expires_at: float, now: float) -> None:
        same = entry.store(token, expires_at)
        due = self._policy.prewarm_due(  # as of the answer, not later
            expires_at, serve_until=entry.serve_until, now=now, rng=self._rng
        )
        if entry.refresh_until is not None:  # a user's grant: rotated before it expires
            due = min(due, self._policy.keepalive_due(entry.refresh_until, now, self._rng))
        # Callers first: the timer, the log and the events can wait for them.
        self._answer(entry.take_waiters(), token=token)
        self._metrics.add(Count.same_token_refreshes, same)
        self._set_timer(entry, due)
        self._outcomes.refreshed(entry, now, same=same)

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
        self._outcomes.failed(entry, error, now)
        if entry.servable(now):
            if not isinstance(error, SystemStoppedError):
                # Stale-while-revalidate: keep serving the valid token and try again later.
                hard = entry.serve_until
                self._set_timer(entry, min(now + self._policy.retry_cap, now + (hard - now) / 2))
        elif entry.refresh_until is not None and not isinstance(error, _GRANT_OVER):
            self._set_timer(entry, now + self._policy.retry_cap)  # a user's grant stays alive
        else:
            self._set_timer(entry, None)
            if not entry.busy and not entry.waiters:
                # Nothing servable and nobody waiting: keep no state for the key (a flood of
                # gets for bogus tenant keys must not pile up entries). The next get starts afresh.
                self._cache.remove(entry)

    # --- prewarm, idle eviction, invalidation ----------------------------------------------------

    def _prewarm(self, entry: Entry) -> None:
        now = self._clock.now()
        if now - self._cache.last_read(entry) > self._policy.idle_ttl:
            until = entry.refresh_until
            if until is not None:  # an idle user's grant is still kept alive
                if self._policy.keepalive_now(until, now):
                    self._start(entry, "keepalive")
                else:
                    self._set_timer(entry, self._policy.keepalive_due(until, now, self._rng))
                return
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
        """A request was refused for the token it carried (a marketplace tenant request's app
        token, a jsapi_ticket request's tenant token): stop serving that one."""
        app_entry = self._cache.get(_prerequisite(entry.key)) if drop else None
        if app_entry is not None:
            app_entry.drop_token()
            if not app_entry.busy:  # its prewarm: nothing to refresh until a get asks
                self._set_timer(app_entry, None)


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


class TicketBook:
    """The app_ticket each marketplace app uses, ordered by when Feishu made its event.

    A ticket handed over with ``made_at`` (the event's creation time, Unix seconds) replaces
    only a ticket made earlier, so a replayed or delayed delivery never puts an older ticket
    back. One without a time replaces only a ticket without one too, or fills an app that has
    none. A ticket Feishu refused is dropped but its time is kept: neither it nor anything made
    before it comes back. Thread-safe: the proxy keeps one too, for a forked child.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str | None, float | None]] = {}  # app_id -> (ticket, made_at)

    def ticket(self, app_id: str) -> str | None:
        with self._lock:
            return self._held.get(app_id, (None, None))[0]

    def offer(self, app_id: str, ticket: str, made_at: float | None) -> bool:
        """Take ``ticket`` if it is not older than the one held; False if it was ignored."""
        with self._lock:
            held, held_at = self._held.get(app_id, (None, None))
            if ticket == held:
                return True
            if made_at is None:
                newer = held is None or held_at is None
            else:
                newer = held_at is None or made_at > held_at
            if newer:
                self._held[app_id] = (ticket, held_at if made_at is None else made_at)
            return newer

    def refuse(self, app_id: str) -> None:
        """Feishu refused the app's ticket (10012): drop it, keep its time as the floor."""
        with self._lock:
            held_at = self._held.get(app_id, (None, None))[1]
            self._held[app_id] = (None, held_at)

    def __iter__(self) -> Iterator[tuple[str, str, float | None]]:
        """(app_id, ticket, made_at) for every app holding a ticket."""
        with self._lock:
            held = list(self._held.items())
        return iter([(app_id, t, at) for app_id, (t, at) in held if t is not None])


# Kinds a self-built app fetches in one request (a jsapi_ticket needs the tenant token first).
_ONE_STEP = frozenset({TokenKind.APP, TokenKind.TENANT})


def _prerequisite(key: TokenKey) -> TokenKey:
    """The token a two-step request carries: a jsapi_ticket's tenant token, a marketplace
    tenant token's app token."""
    if key.kind is TokenKind.JSAPI_TICKET:
        return key._replace(kind=TokenKind.TENANT)
    return key._replace(kind=TokenKind.APP, tenant_key=None)


# Errors after which a user's grant is over (or the system): no keep-alive to try again.
_GRANT_OVER = (ReauthorizationRequired, SystemStoppedError)

_FAILING_MAX = 4096  # keys remembered as failing: a flood of bogus tenant keys is bounded


@dataclasses.dataclass(frozen=True, slots=True)
class SystemHealth:
    """What ``TokenSystem.health()`` reports, for health checks and alerts; no secret or token.

    Attributes:
        running: The system serves (False once stopped).
        store: The store's own report (reachable, breaker open, faults found, last error),
            read when the health was asked for; None for a system without a store.
        keys_failing: Keys whose last refresh ended in an error while they held no token that
            may still be served: gets for them fail (or wait for the next refresh) until a
            refresh succeeds. A key counts until a refresh of it succeeds, or until nobody has
            asked for it for ``RefreshPolicy.idle_ttl``; a key still serving its cached token
            while its refresh is retried does not count.
        keys_failing_by_app: ``keys_failing`` for each app that has any.
        last_refresh_error: The last failed attempt's error, ``"ClassName: message"`` (the
            message holds no secret, and anything token-shaped in it is masked); None if no
            attempt has failed.
        last_refresh_error_age: Seconds since that failure, on the system's clock.
    """

    running: bool
    store: StoreHealth | None
    keys_failing: int
    keys_failing_by_app: Mapping[str, int]
    last_refresh_error: str | None
    last_refresh_error_age: float | None

    def __post_init__(self) -> None:
        by_app = types.MappingProxyType(dict(self.keys_failing_by_app))  # a snapshot
        object.__setattr__(self, "keys_failing_by_app", by_app)

    @classmethod
    def stopped(cls, store: StoreHealth | None) -> SystemHealth:
        """The health of a stopped system (with its store's own report)."""
        return cls(False, store, 0, {}, None, None)

    @property
    def ok(self) -> bool:
        """Running, no key failing, and the store (if any) reachable with its breaker closed.
        (Tokens are still served while the store is down; a readiness check that should only
        take an instance out of service when its gets fail looks at ``keys_failing``.)"""
        store = self.store
        up = store is None or (store.reachable and not store.breaker_open)
        return self.running and self.keys_failing == 0 and up


class Outcomes:
    """What the outcome of each attempt and refresh tells others: events for subscribers, the
    log, and the health record (:meth:`health`: the keys that cannot be served because their
    last refresh failed, and the last error of any attempt).

    Owned by the Refresher, on the TokenActor's thread. A failing key is forgotten when a
    refresh of it succeeds, when ``forget_after`` seconds passed since it last failed (each
    get of it starts a refresh again, so nobody asked meanwhile), or when more than
    ``_FAILING_MAX`` keys fail (the oldest goes first).
    """

    def __init__(
        self, events: EventHub, *, apps: Mapping[str, AppConfig], forget_after: float
    ) -> None:
        self._events = events
        self._apps = apps  # whose secrets an error's text must not carry
        self._forget_after = forget_after
        self._failing: OrderedDict[TokenKey, float] = OrderedDict()  # key -> when; oldest first
        self._last_error: tuple[str, float] | None = None  # (described, when)
        self._ended: OrderedDict[TokenKey, None] = OrderedDict()  # users told to log in again

    def refreshed(self, entry: Entry, now: float, *, same: bool) -> None:
        self._failing.pop(entry.key, None)
        self._ended.pop(entry.key, None)
        _log.info(
            "token refreshed: {} {} expires in {:.0f}s (cause {}, same token {})",
            entry.key.describe(),
            mask_token(entry.token),
            entry.expires_at - now,
            entry.cause,
            same,
        )
        self._events.publish(TokenRefreshed.of(entry.key, entry.expires_at, entry.cause))

    def retrying(
        self, key: TokenKey, error: Exception, now: float, *, delay: float | None = None
    ) -> None:
        """An attempt failed and the refresh goes on: after ``delay``, or at once (None)."""
        self._noted(key, error, now)
        if delay is not None:
            _log.info(
                "token fetch for {} failed ({}), retrying in {:.2f}s", key.describe(), error, delay
            )
        self._events.publish(RefreshFailed.of(key, error, will_retry=True))

    def failed(self, entry: Entry, error: Exception, now: float) -> None:
        """The refresh ended without a token (``entry`` may still hold a servable one)."""
        key = entry.key
        self._events.publish(RefreshFailed.of(key, error, will_retry=False))
        if isinstance(error, ReauthorizationRequired) and key not in self._ended:
            self._ended[key] = None  # once per grant: the next gets fail alike, silently
            while len(self._ended) > _FAILING_MAX:
                self._ended.popitem(last=False)
            self._events.publish(ReauthorizationNeeded(key.app_id, error.user, error.reason))
        _log.warning("token refresh for {} ({}) failed: {}", key.describe(), entry.cause, error)
        if isinstance(error, SystemStoppedError):
            return  # the system stops: no fault of the key's
        self._noted(key, error, now)
        if not entry.servable(now):
            self._failing.pop(key, None)
            self._failing[key] = now
            while len(self._failing) > _FAILING_MAX:
                self._failing.popitem(last=False)

    def health(self, now: float, store: StoreHealth | None) -> SystemHealth:
        failing = self._failing
        while failing and next(iter(failing.values())) <= now - self._forget_after:
            failing.popitem(last=False)
        by_app: dict[str, int] = {}
        for key in failing:
            by_app[key.app_id] = by_app.get(key.app_id, 0) + 1
        error, at = self._last_error if self._last_error is not None else (None, math.nan)
        return SystemHealth(
            running=True,
            store=store,
            keys_failing=len(failing),
            keys_failing_by_app=by_app,
            last_refresh_error=error,
            last_refresh_error_age=None if error is None else max(0.0, now - at),
        )

    def _noted(self, key: TokenKey, error: Exception, now: float) -> None:
        # Errors of ours hold no secret; one a custom source raised may quote anything.
        text = redact(str(error), [self._apps[key.app_id].app_secret])
        self._last_error = (f"{type(error).__name__}: {text}", now)


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
        attempt.kind in (TokenKind.TENANT, TokenKind.JSAPI_TICKET)
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

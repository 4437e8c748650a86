"""The TokenActor: sole owner of the token cache, a dispatcher over small parts.

It handles one message at a time, so it needs no locks, and it never blocks its mailbox: upstream
calls run on worker threads (``_upstream``) and come back as FetchDone messages, delays are
timers (``_scheduler``). The actor answers gets from its cache (``_cache``) and hands everything
about refreshing to the ``Refresher`` (``_refresh``), which asks ``_outcomes.decide`` what a
fetch's outcome means and keeps marketplace app_tickets in a ``TicketBook`` (``_tickets``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pykka
from loguru import logger

from actors import _messages as m
from actors._cache import CallerStats, ReadSnapshot, TokenCache
from actors._clock import Clock
from actors._config import AppConfig, RefreshPolicy, TokenKey, resolve_key
from actors._errors import SystemStoppedError, plain_traceback
from actors._events import EventHub
from actors._messages import GetToken, ReplyWaiter, Waiter
from actors._metrics import Count, MetricsRecorder, TokenMetrics
from actors._refresh import Refresher
from actors._scheduler import Timers
from actors._source import TokenSource
from actors._upstream import Upstream, WorkerPool

__all__ = ["TokenActor"]

_log = logger.bind(component="TokenActor")


class TokenActor(pykka.ThreadingActor):
    """Owns the cache keyed by (base_url, app_id, kind, tenant_key)."""

    use_daemon_thread = True  # a forgotten system must not keep the host process alive

    def __init__(
        self,
        *,
        apps: Mapping[str, AppConfig],
        policy: RefreshPolicy,
        clock: Clock,
        source: TokenSource,
        pool: WorkerPool,
        scheduler: pykka.ActorRef[Any],
        events: EventHub,
        snapshot: ReadSnapshot | None = None,
        callers: CallerStats | None = None,
    ) -> None:
        super().__init__()
        self._apps = dict(apps)
        self._policy = policy
        self._clock = clock
        self._upstream = Upstream(
            source=source, pool=pool, clock=clock, cap=policy.max_concurrent_fetches, ref=self._me
        )
        self._timers = Timers(scheduler, self._me)
        self._cache = TokenCache(safety_margin=policy.safety_margin, snapshot=snapshot)
        self._snapshot = snapshot
        self._callers = CallerStats() if callers is None else callers
        self.metrics = MetricsRecorder()
        self._refresher = Refresher(
            apps=self._apps,
            policy=policy,
            clock=clock,
            cache=self._cache,
            upstream=self._upstream,
            timers=self._timers,
            events=events,
            metrics=self.metrics,
            get=self._get,
        )

    def _me(self) -> pykka.ActorRef[Any]:
        return self.actor_ref

    # --- mailbox -------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        try:
            return self._dispatch(message)
        except Exception as exc:
            # An exception escaping a tell() handler would kill the actor and strand every
            # waiter; fail the one request that caused it and keep serving the rest.
            _log.error(
                "TokenActor failed to handle {}:\n{}", type(message).__name__, plain_traceback(exc)
            )
            waiter = getattr(message, "waiter", None)
            if waiter is not None:
                waiter.fail(exc)
            return None

    def _dispatch(self, message: Any) -> Any:  # noqa: PLR0912 - a branch per message
        match message:
            case m.Get(key, waiter):
                self._get(key, waiter)
            case m.FetchDone():
                self._refresher.on_fetch_done(message)
            case m.Prewarm(key, timer_id):
                self._refresher.on_prewarm(key, timer_id)
            case m.RetryDue(key, timer_id):
                self._refresher.on_retry_due(key, timer_id)
            case GetToken():
                self._on_get_token(message)
            case m.SetTicket(app_id, ticket, waiter):
                self._refresher.on_set_ticket(app_id, ticket)
                if waiter is not None:
                    waiter.resolve(None)
            case m.TicketDeadline(app_id, timer_id):
                self._refresher.on_ticket_deadline(app_id, timer_id)
            case m.ResendDone(app_id, error, ticket):
                self._refresher.on_resend_done(app_id, error, ticket)
            case m.Invalidate(token, waiter):
                waiter.resolve(self._refresher.invalidate(token))
            case m.Snapshot(waiter):
                waiter.resolve(self._metrics_snapshot())
            case m.ReportDue():
                self._log_report()
            case m.Probe():
                return self._upstream.in_flight + self._upstream.queued
            case _:
                _log.warning("TokenActor ignored an unknown message {!r}", type(message).__name__)
        return None

    def on_start(self) -> None:
        self._schedule_report()

    def _schedule_report(self) -> None:
        if self._policy.report_interval is not None:
            self._timers.at(
                self._clock.now() + self._policy.report_interval, lambda _: m.ReportDue()
            )

    def _log_report(self) -> None:
        logger.info("{}", self._metrics_snapshot().report())
        self._schedule_report()

    def on_stop(self) -> None:
        self._fail_everything()

    def on_failure(self, *_: object) -> None:
        self._fail_everything()

    def _fail_everything(self) -> None:
        for entry in self._cache:
            self._refresher.answer(entry.take_waiters(), error=SystemStoppedError())
        self._upstream.clear()

    # --- gets ----------------------------------------------------------------------------------

    def _on_get_token(self, message: GetToken) -> None:
        if not isinstance(message.reply_to, pykka.ActorRef):
            # Nobody can be told about this mistake but the log: GetToken needs the asker's
            # ActorRef (self.actor_ref), not the actor object.
            _log.error(
                "GetToken ignored: reply_to must be a pykka.ActorRef, got {}",
                type(message.reply_to).__name__,
            )
            return
        waiter = ReplyWaiter(self._clock.now(), message.reply_to, message.tag)
        try:
            key = resolve_key(self._apps, message.kind, message.tenant_key, message.app_id)
        except ValueError as exc:
            waiter.fail(exc)
            return
        self._get(key, waiter)

    def _get(self, key: TokenKey, waiter: Waiter) -> None:
        now = self._clock.now()
        entry = self._cache.entry(key, self._apps[key.app_id])
        entry.last_read = now
        if entry.token is not None and now < entry.expires_at - self._policy.safety_margin:
            if waiter.counted:
                self.metrics.count(key.app_id, key.kind, Count.hits)
                self.metrics.add(Count.stale_served, entry.busy)
            self._refresher.answer([waiter], token=entry.token)
            return
        entry.waiters.append(waiter)
        outcome = Count.coalesced if entry.busy else Count.misses
        if waiter.counted:
            self.metrics.count(key.app_id, key.kind, outcome)
        _log.trace("get {}: {}", key.describe(), outcome.name)
        if not entry.busy:
            self._refresher.start(entry, "miss")

    # --- metrics ---------------------------------------------------------------------------------

    def _metrics_snapshot(self) -> TokenMetrics:
        now = self._clock.now()
        expiries = [e.expires_at - now for e in self._cache if e.token is not None]
        reads = self._snapshot
        return self.metrics.snapshot(
            in_flight=self._upstream.in_flight,
            queued=self._upstream.queued,
            mailbox_depth=self.actor_inbox.qsize(),  # type: ignore[attr-defined]
            fast_hits=reads.hits() if reads is not None else {},
            fast_stale=reads.stale_hits() if reads is not None else 0,
            caller_coalesced=self._callers.coalesced_counts(),
            caller_latency=self._callers.latency(),
            keys_cached=len(expiries),
            keys_tracked=len(self._cache),
            soonest_expiry_in=min(expiries) if expiries else None,
        )

"""The TokenActor: sole owner of the token cache.

It handles one message at a time, so it needs no locks, and it never blocks its mailbox: upstream
calls run on the WorkerPool and come back as FetchDone messages, delays are Schedule messages to
the SchedulerActor. Concurrent misses of one key park their waiters on the key's entry and share
one upstream request.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from typing import Any

import pykka
from loguru import logger

from actors import _messages as m
from actors._client import APP_TOKEN_INVALID_CODES, FeishuAuthClient, Grant
from actors._clock import Clock
from actors._config import AppConfig, AppType, RefreshPolicy, TokenKey, TokenKind, resolve_key
from actors._entry import Entry
from actors._errors import (
    AppTicketError,
    AuthError,
    RateLimitedError,
    SystemStoppedError,
    UpstreamError,
)
from actors._events import EventHub, RefreshFailed, TokenRefreshed
from actors._mask import mask_token, plain_traceback
from actors._metrics import MetricsRecorder, TokenMetrics
from actors._scheduler import Cancel, Schedule
from actors._snapshot import ReadSnapshot
from actors._upstream import Upstream
from actors._waiters import Continuation, ReplyWaiter, Waiter
from actors._workers import WorkerPool

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
        client: FeishuAuthClient,
        pool: WorkerPool,
        scheduler: pykka.ActorRef[Any],
        events: EventHub,
        snapshot: ReadSnapshot | None = None,
    ) -> None:
        super().__init__()
        self._reads = snapshot
        self._apps = dict(apps)
        self._policy = policy
        self._clock = clock
        self._upstream = Upstream(
            client=client,
            pool=pool,
            clock=clock,
            cap=policy.max_concurrent_fetches,
            ref=lambda: self.actor_ref,
        )
        self._scheduler = scheduler
        self._events = events
        self._rng = random.Random(policy.seed)
        self._entries: dict[TokenKey, Entry] = {}
        self._by_token: dict[str, TokenKey] = {}
        self._timer_ids = itertools.count(1)
        self._tickets: dict[str, str] = {}
        self._awaiting_ticket: dict[str, int] = {}  # app_id -> deadline timer id
        self.metrics = MetricsRecorder()

    # --- mailbox -------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        try:
            return self._dispatch_message(message)
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

    def _dispatch_message(self, message: Any) -> Any:  # noqa: PLR0912 - a branch per message
        match message:
            case m.Get(key, waiter):
                self._get(key, waiter)
            case m.FetchDone():
                self._on_fetch_done(message)
            case m.Prewarm(key, timer_id):
                self._on_prewarm(key, timer_id)
            case m.RetryDue(key, timer_id):
                self._on_retry_due(key, timer_id)
            case m.GetToken():
                self._on_get_token(message)
            case m.SetTicket():
                self._on_set_ticket(message)
            case m.TicketDeadline(app_id, timer_id):
                self._on_ticket_deadline(app_id, timer_id)
            case m.ResendDone(app_id, error):
                self._on_resend_done(app_id, error)
            case m.Invalidate(token, waiter):
                waiter.resolve(self._invalidate(token))
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
        if self._policy.report_interval is not None:
            self._schedule(
                self._clock.now() + self._policy.report_interval, lambda _: m.ReportDue()
            )

    def _log_report(self) -> None:
        logger.info("{}", self._metrics_snapshot().report())
        interval = self._policy.report_interval
        if interval is not None:
            self._schedule(self._clock.now() + interval, lambda _: m.ReportDue())

    def on_stop(self) -> None:
        self._fail_everything()

    def on_failure(self, *_: object) -> None:
        self._fail_everything()

    def _fail_everything(self) -> None:
        error = SystemStoppedError()
        for entry in self._entries.values():
            waiters, entry.waiters = entry.waiters, []
            self._answer(waiters, error=error)
        self._upstream.clear()

    # --- gets ----------------------------------------------------------------------------------

    def _on_get_token(self, message: m.GetToken) -> None:
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
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = Entry(key, self._apps[key.app_id])
        entry.last_read = now
        metrics = self.metrics
        if entry.token is not None and now < entry.expires_at - self._policy.safety_margin:
            if waiter.counted:
                metrics.count(key.app_id, key.kind, "hits")
                metrics.stale_served += entry.busy
            self._resolve(waiter, entry.token, now)
            return
        entry.waiters.append(waiter)
        outcome = "coalesced" if entry.busy else "misses"
        if waiter.counted:
            metrics.count(key.app_id, key.kind, outcome)
        _log.trace("get {}: {}", key.describe(), outcome)
        if not entry.busy:
            self._start_refresh(entry, "miss")

    def _resolve(self, waiter: Waiter, token: str, now: float) -> None:
        if waiter.counted:
            self.metrics.get_latency.record(now - waiter.started)
        waiter.resolve(token)

    def _answer(
        self, waiters: list[Waiter], *, token: str | None = None, error: Exception | None = None
    ) -> None:
        """Answer every waiter; one that raises must not leave the others unanswered."""
        now = self._clock.now()
        for waiter in waiters:
            try:
                if token is not None:
                    self._resolve(waiter, token, now)
                else:
                    waiter.fail(error or SystemStoppedError())
            except Exception as exc:
                _log.error("a waiter could not be answered:\n{}", plain_traceback(exc))

    # --- refresh cycle: start -> attempt -> (queue) -> worker -> FetchDone -> grant | error -----

    def _publish(self, entry: Entry) -> None:
        if self._reads is not None:
            serve_until = entry.expires_at - self._policy.safety_margin
            self._reads.publish(entry.key, entry.token, serve_until, refreshing=entry.busy)

    def _start_refresh(self, entry: Entry, cause: str) -> None:
        entry.busy = True
        self._publish(entry)
        entry.cause = cause
        entry.attempts = 0
        self.metrics.fetches_by_cause[cause] += 1
        self._attempt(entry)

    def _attempt(self, entry: Entry) -> None:
        app = entry.app
        if app.app_type is AppType.SELF_BUILT:
            self._enqueue(entry, {})
        elif entry.key.kind is TokenKind.APP:
            ticket = self._tickets.get(app.app_id)
            if ticket is None:
                self._await_ticket(entry)
            else:
                entry.ticket_used = ticket
                self._enqueue(entry, {"app_ticket": ticket})
        else:
            # Marketplace tenant tokens take two steps; the app token comes from this same
            # cache (a hit, or one shared fetch for every tenant of the app).
            self._get(
                app.key(TokenKind.APP),
                Continuation(
                    self._clock.now(),
                    on_token=lambda token: self._enqueue(entry, {"app_token": token}),
                    on_error=lambda error: self._finish_failure(entry, error),
                ),
            )

    def _enqueue(self, entry: Entry, request: dict[str, str]) -> None:
        # Keys with callers waiting go first; prewarms follow in order of their hard deadline.
        deadline = float("-inf") if entry.waiters else entry.expires_at - self._policy.safety_margin
        self._refused(self._upstream.enqueue(entry.key, entry.app, request, deadline))

    def _refused(self, keys: list[TokenKey]) -> None:
        for key in keys:
            self._finish_failure(self._entries[key], SystemStoppedError())

    def _on_fetch_done(self, done: m.FetchDone) -> None:
        try:
            self._fetch_result(self._entries[done.key], done)
        finally:  # the slot is free whatever happened to the result
            self._refused(self._upstream.finished())

    def _fetch_result(self, entry: Entry, done: m.FetchDone) -> None:
        self.metrics.fetch_latency.record(done.latency)
        key, result = done.key, done.result
        margin = self._policy.safety_margin
        if (
            isinstance(result, Grant)
            and done.started_at + result.expire - margin <= self._clock.now()
        ):
            # Never servable: caching it would only schedule an immediate refresh, again and
            # again. Treat it as a failed attempt (retried with backoff, then reported).
            detail = f"token expires within the safety margin ({result.expire:g}s left)"
            result = UpstreamError(0, None, 1, detail=detail)
        if isinstance(result, Grant):
            self.metrics.count(key.app_id, key.kind, "fetch_success")
            self._on_grant(entry, result, done.started_at)
        else:
            self.metrics.count(key.app_id, key.kind, "fetch_failure")
            self.metrics.failures_by_error[type(result).__name__] += 1
            self._on_error(entry, result)

    def _on_grant(self, entry: Entry, grant: Grant, started_at: float) -> None:
        now = self._clock.now()
        same = grant.token == entry.token
        if same:
            self.metrics.same_token_refreshes += 1
        elif entry.token is not None:
            self._by_token.pop(entry.token, None)
        entry.token = grant.token
        # Measured from when the request left: the token cannot outlive that.
        entry.expires_at = started_at + grant.expire
        self._by_token[grant.token] = entry.key
        entry.busy = False
        entry.attempts = 0
        self._publish(entry)
        self._schedule_prewarm(entry, now)
        _log.bind(key=entry.key.describe(), cause=entry.cause, same_token=same).info(
            "token refreshed: {} expires in {:.0f}s", mask_token(grant.token), grant.expire
        )
        self._events.publish(TokenRefreshed.of(entry.key, entry.expires_at, entry.cause))
        waiters, entry.waiters = entry.waiters, []
        self._answer(waiters, token=grant.token)

    def _schedule_prewarm(self, entry: Entry, now: float) -> None:
        self._set_prewarm(entry, self._policy.prewarm_due(entry.expires_at, now, self._rng))

    def _set_prewarm(self, entry: Entry, due: float | None) -> None:
        """Replace the key's prewarm timer (None: just cancel it), so at most one is pending."""
        if entry.prewarm_timer is not None:
            self._scheduler.tell(Cancel(entry.prewarm_timer))
            entry.prewarm_timer = None
        if due is not None:
            entry.prewarm_timer = self._schedule(due, lambda tid: m.Prewarm(entry.key, tid))

    def _on_error(self, entry: Entry, error: Exception) -> None:
        key = entry.key
        if isinstance(error, AppTicketError) and key.kind is TokenKind.APP:
            entry.attempts += 1
            if entry.attempts >= self._policy.max_attempts:  # every ticket we got was refused
                self._finish_failure(entry, error)
                return
            self._publish_failure(entry, error, will_retry=True)
            if self._tickets.get(key.app_id) == entry.ticket_used:
                self._tickets.pop(key.app_id)  # 10012: this ticket is stale, ask for a new one
                self._await_ticket(entry)
            else:  # a newer ticket arrived while the request was out: use it at once
                self._attempt(entry)
            return
        if not isinstance(error, UpstreamError):
            self._finish_failure(entry, error)
            return
        if key.kind is TokenKind.TENANT and error.code in APP_TOKEN_INVALID_CODES:
            self._drop_token(self._entries.get(entry.app.key(TokenKind.APP)))
        entry.attempts += 1
        if entry.attempts >= self._policy.max_attempts:
            self._finish_failure(entry, error.after_attempts(entry.attempts))
            return
        self.metrics.retries += 1
        retry_after = error.retry_after if isinstance(error, RateLimitedError) else None
        delay = self._policy.backoff(entry.attempts, self._rng, retry_after=retry_after)
        _log.bind(key=key.describe(), attempt=entry.attempts).info(
            "token fetch failed ({}), retrying in {:.2f}s", error, delay
        )
        self._publish_failure(entry, error, will_retry=True)
        entry.retry_timer = self._schedule(
            self._clock.now() + delay, lambda tid: m.RetryDue(key, tid)
        )

    def _on_retry_due(self, key: TokenKey, timer_id: int) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.retry_timer == timer_id:
            entry.retry_timer = None
            self._attempt(entry)

    def _finish_failure(self, entry: Entry, error: Exception) -> None:
        entry.busy = False
        entry.attempts = 0
        self._publish(entry)
        waiters, entry.waiters = entry.waiters, []
        self._answer(waiters, error=error)
        self._publish_failure(entry, error, will_retry=False)
        _log.bind(key=entry.key.describe(), cause=entry.cause).warning(
            "token refresh failed: {}", error
        )
        now = self._clock.now()
        hard = entry.expires_at - self._policy.safety_margin
        if entry.token is not None and now < hard and not isinstance(error, SystemStoppedError):
            # Stale-while-revalidate: keep serving the valid token and try again later.
            self._set_prewarm(entry, min(now + self._policy.retry_cap, now + (hard - now) / 2))

    def _publish_failure(self, entry: Entry, error: Exception, *, will_retry: bool) -> None:
        self._events.publish(RefreshFailed.of(entry.key, error, will_retry=will_retry))

    # --- prewarm, idle eviction, invalidation ----------------------------------------------------

    def _on_prewarm(self, key: TokenKey, timer_id: int) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.prewarm_timer != timer_id:
            return
        entry.prewarm_timer = None
        if entry.busy:
            return
        last_read = entry.last_read
        if self._reads is not None:
            last_read = max(last_read, self._reads.reads.get(key, last_read))
        if self._clock.now() - last_read > self._policy.idle_ttl:
            # Nobody has read this key for a long time: stop refreshing it forever.
            self._drop_token(entry)
            del self._entries[key]
            if self._reads is not None:
                self._reads.withdraw(key)
            self.metrics.idle_evictions += 1
            return
        self.metrics.prewarms += 1
        self._start_refresh(entry, "prewarm")

    def _invalidate(self, token: str) -> bool:
        key = self._by_token.get(token)
        entry = self._entries.get(key) if key is not None else None
        if entry is None or entry.token != token:
            return False  # an older token, or one this system never issued: nothing to drop
        self._drop_token(entry)
        self.metrics.invalidations += 1
        if not entry.busy:
            self._start_refresh(entry, "invalidate")
        return True

    def _drop_token(self, entry: Entry | None) -> None:
        if entry is None or entry.token is None:
            return
        self._by_token.pop(entry.token, None)
        entry.token = None
        entry.expires_at = 0.0
        self._publish(entry)
        self._set_prewarm(entry, None)

    # --- app_ticket ----------------------------------------------------------------------------

    def _await_ticket(self, entry: Entry) -> None:
        app = entry.app
        if app.app_id in self._awaiting_ticket:
            return
        deadline = self._clock.now() + self._policy.ticket_wait
        self._awaiting_ticket[app.app_id] = self._schedule(
            deadline, lambda tid: m.TicketDeadline(app.app_id, tid)
        )
        self.metrics.ticket_resends += 1
        if not self._upstream.resend_ticket(app):
            self._finish_failure(entry, SystemStoppedError())

    def _on_resend_done(self, app_id: str, error: Exception | None) -> None:
        if error is None:
            return
        _log.bind(app_id=app_id).warning("app_ticket resend failed: {}", error)
        if isinstance(error, AuthError) and app_id in self._awaiting_ticket:
            # Wrong credentials: no ticket will ever come, so do not make callers wait for it.
            self._scheduler.tell(Cancel(self._awaiting_ticket.pop(app_id)))
            entry = self._entries.get(self._apps[app_id].key(TokenKind.APP))
            if entry is not None and entry.busy:
                self._finish_failure(entry, error)

    def _on_set_ticket(self, message: m.SetTicket) -> None:
        app = self._apps[message.app_id]
        self._tickets[app.app_id] = message.ticket
        timer_id = self._awaiting_ticket.pop(app.app_id, None)
        if timer_id is not None:
            self._scheduler.tell(Cancel(timer_id))
            entry = self._entries.get(app.key(TokenKind.APP))
            if entry is not None and entry.busy:
                self._enqueue(entry, {"app_ticket": message.ticket})
        if message.waiter is not None:
            message.waiter.resolve(None)

    def _on_ticket_deadline(self, app_id: str, timer_id: int) -> None:
        if self._awaiting_ticket.get(app_id) != timer_id:
            return
        del self._awaiting_ticket[app_id]
        entry = self._entries.get(self._apps[app_id].key(TokenKind.APP))
        if entry is not None and entry.busy:
            reason = (
                f"none arrived within {self._policy.ticket_wait:g}s of asking Feishu to resend it"
            )
            self._finish_failure(entry, AppTicketError(app_id, reason))

    # --- helpers -------------------------------------------------------------------------------

    def _schedule(self, due: float, make: Any) -> int:
        timer_id = next(self._timer_ids)
        self._scheduler.tell(Schedule(timer_id, due, self.actor_ref, make(timer_id)))
        return timer_id

    def _metrics_snapshot(self) -> TokenMetrics:
        now = self._clock.now()
        expiries = [e.expires_at - now for e in self._entries.values() if e.token is not None]
        reads = self._reads
        return self.metrics.snapshot(
            in_flight=self._upstream.in_flight,
            queued=self._upstream.queued,
            mailbox_depth=self.actor_inbox.qsize(),  # type: ignore[attr-defined]
            fast_hits=reads.hits() if reads is not None else {},
            fast_stale=reads.stale_hits() if reads is not None else 0,
            fast_latency=reads.latency() if reads is not None else None,
            keys_cached=len(expiries),
            soonest_expiry_in=min(expiries) if expiries else None,
        )

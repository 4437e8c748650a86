"""The TokenActor: the mailbox in front of the token cache.

It handles one message at a time, so nothing behind it needs a lock, and it never blocks: the
cache, its entries and their refreshes belong to the :class:`~actors._refresh.Refresher`, which
the actor feeds its mail and which never calls back. Upstream calls run on worker threads
(``_upstream``) and come back as FetchDone mail; delays are timers (``_scheduler``) that come
back as Wake mail. The actor itself speaks the reply protocol for embedding actors
(:class:`GetToken`), answers metrics and health snapshots and logs the periodic report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pykka
from loguru import logger

from actors import _messages as m
from actors._cache import CallerStats, ReadSnapshot
from actors._clock import Clock
from actors._config import AppConfig, RefreshPolicy, TokenKey, TokenKind, resolve_key
from actors._errors import (
    ReauthorizationRequired,
    SystemStoppedError,
    detached,
    plain_traceback,
)
from actors._events import EventHub
from actors._messages import GetToken, ReplyWaiter, Waiter
from actors._metrics import TokenMetrics
from actors._refresh import Refresher, SystemHealth
from actors._scheduler import Timers
from actors._source import TokenSource
from actors._upstream import WorkerPool, tell

if TYPE_CHECKING:
    from actors.users._rotation import UserSource

__all__ = ["TokenActor"]

_log = logger.bind(component="TokenActor")


class TokenActor(pykka.ThreadingActor):
    """Owns the cache keyed by (base_url, app_id, kind, tenant_key), through its Refresher."""

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
        users: UserSource | None = None,
        scan_grants: bool = False,
    ) -> None:
        super().__init__()
        self._scan_grants = scan_grants
        self._pool = pool
        self._users = users
        self._apps = dict(apps)
        self._policy = policy
        self._clock = clock
        self._callers = CallerStats() if callers is None else callers
        self._handled = 0  # messages handled, for settle() to tell a quiet actor
        self._timers = Timers(scheduler, self.actor_ref, clock)
        self._refresher = Refresher(
            apps=self._apps,
            policy=policy,
            clock=clock,
            source=source,
            pool=pool,
            timers=self._timers,
            me=self.actor_ref,
            events=events,
            snapshot=snapshot,
        )

    # --- mailbox -------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        self._handled += 1
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

    def _dispatch(self, message: Any) -> Any:
        refresher = self._refresher
        match message:
            case m.Get(key, waiter):
                refresher.get(key, waiter)
            case m.FetchDone():
                refresher.fetch_done(message)
            case m.Wake(key, timer_id):
                refresher.wake(key, timer_id)
            case GetToken():
                self._on_get_token(message)
            case m.SetTicket(app_id, ticket, made_at, waiter):
                refresher.set_ticket(app_id, ticket, made_at)
                if waiter is not None:
                    waiter.resolve(None)
            case m.Invalidate(token, waiter):
                waiter.resolve(refresher.invalidate(token))
            case m.Snapshot(waiter) | m.Health(waiter):
                waiter.resolve(self._report(message))
            case m.ReportDue() | m.ScanDue():
                self._on_due(message)
            case m.Probe():
                return refresher.fetches, self._handled - 1
            case m.ResendDone() | m.Redeem() | m.Redeemed() | m.ForgetUser() | m.KeepGrants():
                self._on_worker_mail(message)
            case _:
                _log.warning("TokenActor ignored an unknown message {!r}", type(message).__name__)
        return None

    def on_start(self) -> None:
        self._schedule_report()
        if self._scan_grants:
            self._scan()

    def on_stop(self) -> None:
        self._refresher.stop()

    def on_failure(self, *_: object) -> None:
        self._refresher.stop()

    # --- worker mail; user logins and logouts (their store I/O runs on a worker) ------------

    def _on_worker_mail(
        self, message: m.ResendDone | m.Redeem | m.Redeemed | m.ForgetUser | m.KeepGrants
    ) -> None:
        """Mail about work done on (or sent to) a worker: ticket resends, logins, logouts."""
        refresher = self._refresher
        match message:
            case m.ResendDone(app_id, error, ticket):
                refresher.resend_done(app_id, error, ticket)
            case m.Redeem():
                self._redeem(message)
            case m.Redeemed(key, grant, started_at, answer, waiter):
                if key is not None and grant is not None:
                    refresher.adopt(key, grant, started_at)
                if isinstance(answer, Exception):
                    waiter.fail(answer)
                else:
                    waiter.resolve(answer)
            case m.ForgetUser(key, waiter):
                self._forget(key, waiter)
            case m.KeepGrants(grants):
                for key, refresh_until in grants:
                    refresher.keep(key, refresh_until)

    def _redeem(self, message: m.Redeem) -> None:
        users, clock, me = self._users, self._clock, self.actor_ref
        if users is None:
            message.waiter.fail(ValueError("this system cannot keep user grants"))
            return

        def job() -> None:
            started = clock.now()
            try:
                grant, token = users.redeem(
                    message.app,
                    code=message.code,
                    redirect_uri=message.redirect_uri,
                    code_verifier=message.code_verifier,
                )
            except Exception as exc:  # the waiter's answer: typed, without the code
                done = m.Redeemed(None, None, started, detached(exc), message.waiter)
            else:
                key = message.app.key(TokenKind.USER, None, grant.open_id)
                done = m.Redeemed(key, token, started, grant, message.waiter)
            tell(me, done)

        self._submit(job, message.waiter)

    def _forget(self, key: TokenKey, waiter: Waiter) -> None:
        error = ReauthorizationRequired("unknown_user", app_id=key.app_id, user=key.user or "")
        self._refresher.forget(key, error)
        users, app = self._users, self._apps[key.app_id]
        if users is None:
            waiter.resolve(False)
            return

        def job() -> None:
            try:
                waiter.resolve(users.forget(app, key.user or ""))
            except Exception as exc:
                waiter.fail(detached(exc))

        self._submit(job, waiter)

    def _on_due(self, message: m.ReportDue | m.ScanDue) -> None:
        """The actor's own periodic work: the performance report, the store's grants."""
        if isinstance(message, m.ReportDue):
            self._log_report()
        else:
            self._scan()

    def _scan(self) -> None:
        """Keep every grant the store holds alive from this process too, now and every quarter
        of the keep-alive lead (grants of logins elsewhere included); the store's lease lets
        one process per grant rotate it. The listing is store I/O: it runs on a worker."""
        users, me, apps = self._users, self.actor_ref, list(self._apps.values())
        every = max(60.0, self._policy.user_keepalive_lead / 4)
        self._timers.at(self._clock.now() + every, lambda _: m.ScanDue())
        if users is None:
            return

        def job() -> None:
            found = []
            for app in apps:
                try:
                    grants = users.grants(app)
                except Exception as exc:  # a wrong key, a failing store: logged, not fatal
                    _log.warning("user grants of {} not listed: {}", app.app_id, exc)
                    continue
                for grant in grants:
                    until = users.user_grant(grant).refresh_expires_at
                    if until is not None:
                        found.append((app.key(TokenKind.USER, None, grant.open_id), until))
            if found:
                tell(me, m.KeepGrants(tuple(found)))

        with contextlib.suppress(RuntimeError):  # the pool shut down: the system stops
            self._pool.submit(job)

    def _submit(self, job: Callable[[], None], waiter: Waiter) -> None:
        try:
            self._pool.submit(job)
        except RuntimeError:  # the pool shut down: the system is stopping
            waiter.fail(SystemStoppedError())

    # --- the reply protocol, metrics -----------------------------------------------------------

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
            key = resolve_key(
                self._apps, message.kind, message.tenant_key, message.app_id, message.user
            )
        except ValueError as exc:
            waiter.fail(exc)
            return
        self._refresher.get(key, waiter)

    def _report(self, question: m.Snapshot | m.Health) -> TokenMetrics | SystemHealth:
        if isinstance(question, m.Health):
            return self._refresher.health(question.store)
        return self._metrics_snapshot()

    def _metrics_snapshot(self) -> TokenMetrics:
        depth = self.actor_inbox.qsize()  # type: ignore[attr-defined]
        return self._refresher.metrics(mailbox_depth=depth, callers=self._callers)

    def _schedule_report(self) -> None:
        if self._policy.report_interval is not None:
            due = self._clock.now() + self._policy.report_interval
            self._timers.at(due, lambda _: m.ReportDue())

    def _log_report(self) -> None:
        logger.info("{}", self._metrics_snapshot().report())
        self._schedule_report()

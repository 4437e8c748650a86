"""TokenSystem: starts, wires and stops the actors and their threads, once per process."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Self, cast

import pykka
import requests
from loguru import logger
from requests.adapters import HTTPAdapter

from actors import _cache as _fork
from actors import _messages as m
from actors._cache import CallerStats, ReadSnapshot
from actors._clock import Clock, SystemClock
from actors._config import AppConfig, RefreshPolicy
from actors._errors import SystemStoppedError, TokenError
from actors._events import EventHub, Subscriber
from actors._messages import PendingFutures
from actors._metrics import TokenMetrics
from actors._proxy import TokenProxy, store_health
from actors._refresh import SystemHealth
from actors._scheduler import NextDue, SchedulerActor, Tick
from actors._source import TokenSource
from actors._token_actor import TokenActor
from actors._upstream import WorkerPool
from actors.feishu._client import FeishuAuthClient
from actors.feishu._oauth import FeishuOAuth
from actors.feishu._sockets import AbortableAdapter
from actors.stores import Store, StoreHealth
from actors.stores._grants import MemoryGrants
from actors.users._logins import SystemLogins
from actors.users._rotation import UserSource

__all__ = ["StoreUnavailableError", "TokenSystem"]


class StoreUnavailableError(TokenError):
    """``TokenSystem.start(..., store=..., require_store=True)`` found the store unreachable,
    so nothing was started. ``health`` is what the store said (no secret in it)."""

    def __init__(self, health: StoreHealth) -> None:
        self.health = health
        cause = f" ({health.last_error})" if health.last_error else ""
        super().__init__(
            f"the store {health.where} is unreachable{cause}; require_store=True refuses to "
            "start without it"
        )

    def __reduce__(self) -> tuple[type[StoreUnavailableError], tuple[StoreHealth]]:
        return type(self), (self.health,)


class TokenSystem(SystemLogins):
    """The running system: a TokenActor, a SchedulerActor, fetch workers and a clock.

    Started with :meth:`start` (the only way). :attr:`proxy` is the token API (futures from its
    plain methods, values from its ``a``-prefixed coroutines); the system's own methods are
    blocking lifecycle and reporting conveniences that return values: :meth:`settle`,
    :meth:`stop`, :meth:`health`, :meth:`metrics`, :meth:`performance_report`,
    :meth:`log_performance_metrics`.

    One system per process: its actors and workers are threads, and ``fork()`` copies memory,
    not threads. A system used in a process forked after start() (``gunicorn --preload``, a
    system warmed at import) never hangs and never fails for that: the first use there starts
    the system's own actors, threads, HTTP session and store connections in that process
    (with one WARNING), and they serve it from then on; nothing of the parent's (threads,
    locks, sockets, the tokens it cached) is used there. :meth:`stop` there stops only what
    that process started. Starting one system per process (in a lifespan or ``post_fork``
    hook) avoids the extra start.

    Example:
        >>> with TokenSystem.start(AppConfig("cli_x", "secret")) as system:  # doctest: +SKIP
        ...     token = system.proxy.get_token().get(timeout=5)
    """

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        # One way to start a system: the constructor is not a second spelling of start().
        msg = "start a TokenSystem with TokenSystem.start(app_or_apps, ...), not TokenSystem(...)"
        raise TypeError(msg)

    def _boot(
        self,
        app_or_apps: AppConfig | Iterable[AppConfig],
        *,
        policy: RefreshPolicy | None = None,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        source: TokenSource | None = None,
        store: Store | None = None,
        require_store: bool = False,
        fast_reads: bool = True,
    ) -> None:
        apps = _apps_by_id(app_or_apps)
        policy = RefreshPolicy() if policy is None else policy
        if not isinstance(policy, RefreshPolicy):
            msg = f"policy must be a RefreshPolicy, got {type(policy).__name__}"
            raise ValueError(msg)
        clock = SystemClock() if clock is None else clock
        if not isinstance(clock, Clock):
            msg = f"clock must be an actors.Clock (SystemClock, ManualClock), got {clock!r}"
            raise ValueError(msg)
        if source is not None and not isinstance(source, TokenSource):
            msg = f"source must be an actors.TokenSource (fetch, resend_ticket), got {source!r}"
            raise ValueError(msg)
        if session is not None and not isinstance(session, requests.Session):
            msg = f"session must be a requests.Session, got {type(session).__name__}"
            raise ValueError(msg)
        if source is not None and session is not None:
            msg = "give either session= (for the built-in Feishu client) or source=, not both"
            raise ValueError(msg)
        if store is not None and not isinstance(store, Store):
            msg = f"store must be an actors.stores.Store such as actors.RedisStore, got {store!r}"
            raise ValueError(msg)
        if require_store:
            if store is None:
                msg = "require_store=True needs a store= to require"
                raise ValueError(msg)
            health = store_health(store)
            if health is not None and not health.reachable:
                raise StoreUnavailableError(health)  # before anything starts: nothing to stop
        self._apps = apps
        self._policy = policy
        self._clock: Clock = clock
        # What a process forked from this one needs to start the same system there.
        self._session, self._source, self._fast_reads = session, source, fast_reads
        self._subscribers: tuple[Subscriber, ...] = ()
        self._stopped = False
        self._proxy = TokenProxy(apps=apps, clock=clock, serve_here=self._here)
        self._process = _Process(self, store)

    def _here(self) -> _Process:
        """What serves this system in this process: in a process forked after start(), a
        system of its own, started on first use (never the parent's threads, locks, sockets)."""
        process = self._process
        if process.generation == _fork.current():
            return process
        with _fork.process_lock():  # made in this process: nobody can be holding it from before
            if self._stopped:
                raise SystemStoppedError()
            process = self._process
            if process.generation != _fork.current():
                process = self._process = process.restarted(self)
        return process

    @classmethod
    def start(
        cls,
        app_or_apps: AppConfig | Iterable[AppConfig],
        *,
        policy: RefreshPolicy | None = None,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        source: TokenSource | None = None,
        store: Store | None = None,
        require_store: bool = False,
        fast_reads: bool = True,
    ) -> Self:
        """Start the actors for one app or several; ValueError names a bad argument.

        ``session`` is the ``requests.Session`` the built-in Feishu client uses; ``source``
        replaces that client with any :class:`TokenSource` (a fake in tests); ``store`` (an
        :class:`actors.stores.Store`, e.g. ``actors.RedisStore``) shares tokens, tickets and
        invalidations between processes (in a forked child, the store's ``reopened()`` copy).
        Without ``require_store``, a store that is down is no reason not to start: each
        process then fetches its own tokens until it answers (:meth:`health` says so). With
        ``require_store=True``, a store that does not answer now (its ``health()``) raises
        :class:`StoreUnavailableError` and nothing is started; the store is left unused, so
        the same one may be passed again. (Checked by start() only: a process forked later
        starts with the store's reopened copy whatever it answers.)
        ``fast_reads=False`` sends every get through the TokenActor's mailbox (pure message
        path); the default answers servable cached tokens from the actor's published snapshot.
        """
        system = cls.__new__(cls)
        system._boot(
            app_or_apps,
            policy=policy,
            clock=clock,
            session=session,
            source=source,
            store=store,
            require_store=require_store,
            fast_reads=fast_reads,
        )
        return system

    # --- public surface --------------------------------------------------------------------------

    @property
    def proxy(self) -> TokenProxy:
        """The token API: ``get_token``/``aget_token``, ``invalidate``/``ainvalidate``, ..."""
        return self._proxy

    @property
    def actor_ref(self) -> pykka.ActorRef[TokenActor]:
        """The TokenActor's ref, for other actors: tell it a :class:`GetToken`. (In a process
        forked after start(), this process's own; a ref read before the fork is the parent's.)"""
        return self._live().ref

    @property
    def apps(self) -> Mapping[str, AppConfig]:
        """The apps this system serves, by app_id."""
        return MappingProxyType(self._apps)

    @property
    def clock(self) -> Clock:
        """The clock every deadline in this system follows."""
        return self._clock

    @property
    def policy(self) -> RefreshPolicy:
        """The refresh policy this system was started with."""
        return self._policy

    def jsapi_config(
        self,
        url: str,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, str | int]:
        """``h5sdk.config``'s arguments for the page at ``url`` (the fragment is not signed)
        from the tenant's cached jsapi_ticket; blocks (``proxy.ajsapi_config``: a coroutine)."""
        future = self._proxy.jsapi_config(url, tenant_key=tenant_key, app_id=app_id)
        return future.get(timeout=timeout)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Deliver TokenRefreshed / RefreshFailed events; returns the unsubscribe function.

        A callable subscribed before a fork hears the child's events in the child too; an
        actor subscribed before it does not (its thread is the parent's).
        """
        self._live().subscribe(subscriber)
        self._subscribers = (*self._subscribers, subscriber)

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
            process = self._process
            if process.generation == _fork.current():
                process.unsubscribe(subscriber)

        return unsubscribe

    def metrics(self, *, timeout: float = 5.0) -> TokenMetrics:
        """A frozen snapshot of the counters (blocks; ``proxy.metrics()`` is the future)."""
        return self._proxy.metrics().get(timeout=timeout)

    def health(self, *, timeout: float = 5.0) -> SystemHealth:
        """What a health check needs, now (blocks; ``proxy.health()`` is the future,
        ``proxy.ahealth()`` the coroutine): whether the system runs, its store's own report
        (reachable, breaker open, faults), the keys whose gets fail and the last refresh error
        (:class:`SystemHealth`). A stopped system answers ``running=False`` (with its store's
        report) rather than raising. The store is asked on this thread, for up to one store
        operation's timeout; ``timeout`` bounds the TokenActor's answer (``pykka.Timeout``
        past it, as for :meth:`metrics`).
        """
        if not self._stopped:
            try:
                return self._proxy.health().get(timeout=timeout)
            except SystemStoppedError:  # stopped meanwhile
                pass
        process = self._process
        store = process.store if process.generation == _fork.current() else None
        return SystemHealth.stopped(store_health(store))

    def performance_report(self, *, timeout: float = 5.0) -> str:
        return self.metrics(timeout=timeout).report()  # the counters, human-readable

    def log_performance_metrics(self, *, timeout: float = 5.0) -> None:
        """Log :meth:`performance_report` at INFO (once ``logger.enable("actors")``)."""
        logger.info("{}", self.performance_report(timeout=timeout))

    def next_due(self, *, timeout: float = 5.0) -> float | None:
        """When the system next has something to do on its own (the earliest prewarm, retry or
        ticket deadline), on its clock; None when nothing is scheduled. With a ManualClock, a
        simulation advances the clock to this time, settles, and repeats."""
        return cast("float | None", self._live().scheduler.ask(NextDue(), timeout=timeout))

    def settle(self, *, timeout: float = 5.0) -> None:
        """Block until quiescent: mailboxes empty, no upstream call running, nothing due now.

        Raises TimeoutError if that does not happen within ``timeout`` real seconds.
        """
        deadline = time.monotonic() + timeout

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                msg = f"TokenSystem did not settle within {timeout:g}s"
                raise TimeoutError(msg)
            return remaining

        if self._stopped:
            raise SystemStoppedError()
        try:
            self._here().settle(left, self._clock)
        except pykka.ActorDeadError:  # stopped while settling
            raise SystemStoppedError() from None

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop everything; idempotent. Pending futures fail with SystemStoppedError.

        In a process forked after start(), only what this process started is stopped.
        """
        with _fork.process_lock():  # not while this process is starting its own system
            if self._stopped:
                return
            self._stopped = True
            process = self._process
        if process.generation == _fork.current():
            process.stop(timeout)
        # else: a forked child that never used the system has nothing of its own to stop,
        # and must not touch the parent's threads, locks or sockets.
        logger.debug("TokenSystem stopped")

    @property
    def _adapter(self) -> AbortableAdapter | None:
        return self._process.adapter  # white box for tests: the sockets of the owned session

    def _user_source(self) -> UserSource:
        return self._live().users

    def _live(self) -> _Process:
        # Reporting on a stopped system needs no system of this process's own.
        return self._process if self._stopped else self._here()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<TokenSystem apps={list(self._apps)} {state}>"


class _Process:
    """What serves a system in one process: its actors, worker and event threads, HTTP
    session, store and the futures handed out there.

    A process forked after start() has none of the parent's threads, and the parent's locks
    and sockets may be held or in use by threads that do not exist there: it gets a new
    ``_Process`` (:meth:`restarted`), and the parent's is never touched in it again.
    """

    def __init__(self, system: TokenSystem, store: Store | None, *, forked: bool = False) -> None:
        policy, clock = system._policy, system._clock
        self.generation = _fork.current()
        self.adapter: AbortableAdapter | None = None
        self.owned_session: requests.Session | None = None
        session = system._session
        if session is not None and forked:
            _drop_inherited_connections(session)
        session = self._session(session, policy)
        oauth = FeishuOAuth(session, timeout=policy.request_timeout)  # user tokens: always HTTP
        source = system._source or FeishuAuthClient(
            session, timeout=policy.request_timeout, keyless=oauth.tenant_grant
        )
        book = store.grants() if store is not None else None
        if store is not None:
            # The shared tier wraps the source: the TokenActor stays the L1, unchanged.
            source = store.wrap(source, policy)  # ValueError if it serves another system
            for app in system._apps.values():
                store.serves(app)  # its grant book names apps by app_id
        self.closed = threading.Event()
        self._redemption_deadline = sum(policy.request_timeout) + 1.0
        self.events = EventHub()
        self.users = UserSource(
            source,
            apps=system._apps,
            oauth=oauth,
            book=MemoryGrants() if book is None else book,
            store=store,
            events=self.events,
            policy=policy,
            clock=clock,
            closed=self.closed,
        )
        self.store = store
        self.pending = PendingFutures()
        self._unsubscribe: dict[int, Callable[[], None]] = {}
        for subscriber in system._subscribers:
            self.subscribe(subscriber)
        # One worker more than the fetch cap, so an app_ticket resend never queues behind fetches.
        self.pool = WorkerPool(policy.max_concurrent_fetches + 1)
        callers = CallerStats()
        self.snapshot = ReadSnapshot(callers) if system._fast_reads else None
        self.scheduler: pykka.ActorRef[SchedulerActor] = SchedulerActor.start(clock)
        try:
            self.ref: pykka.ActorRef[TokenActor] = TokenActor.start(
                apps=system._apps,
                policy=policy,
                clock=clock,
                source=self.users,
                pool=self.pool,
                scheduler=self.scheduler,
                events=self.events,
                snapshot=self.snapshot,
                callers=callers,
                users=self.users,
                scan_grants=book is not None,
            )
        except BaseException:
            self.scheduler.stop()
            raise
        proxy = system._proxy
        proxy._serve(self.ref, self.pending, self.snapshot, callers, store)
        if store is not None:
            store.attach(proxy.invalidate)  # other processes' invalidations drop it here
        logger.bind(apps=list(system._apps)).debug("TokenSystem started")

    def _session(self, session: requests.Session | None, policy: RefreshPolicy) -> requests.Session:
        if session is None:
            session = self.owned_session = requests.Session()
            # stop() shuts these sockets down, so no worker stays blocked in a read.
            self.adapter = AbortableAdapter(pool_maxsize=policy.max_concurrent_fetches + 1)
            session.mount("https://", self.adapter)
            session.mount("http://", self.adapter)
        return session

    def restarted(self, system: TokenSystem) -> _Process:
        """This system's own for this forked process, started now; one WARNING says so."""
        store, note = _reopened(self.store)
        pykka.ActorRegistry.unregister(self.ref)  # the parent's actors do not run here
        pykka.ActorRegistry.unregister(self.scheduler)
        # An actor subscribed before the fork runs in the parent; a callable runs anywhere.
        system._subscribers = tuple(
            s for s in system._subscribers if not isinstance(s, pykka.ActorRef)
        )
        process = _Process(system, store, forked=True)
        logger.warning(
            "this TokenSystem was started before fork; started a new one in process {}; start "
            "one per process, e.g. in a lifespan or post_fork hook{}",
            os.getpid(),
            note,
        )
        return process

    def subscribe(self, subscriber: Subscriber) -> None:
        self._unsubscribe[id(subscriber)] = self.events.subscribe(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        unsubscribe = self._unsubscribe.pop(id(subscriber), None)
        if unsubscribe is not None:
            unsubscribe()

    def settle(self, left: Callable[[], float], clock: Clock) -> None:
        # Quiescent once a whole pass saw nothing happen: no timer fired, no fetch running, no
        # event undelivered, nothing due now, and the TokenActor handled no message since the
        # previous pass's Probe but that Probe (its count says so; an empty mailbox would not:
        # the actor may be handling what it just took out of it).
        expected = None
        while True:
            fired = self.scheduler.ask(Tick(), timeout=left())
            fetches, handled = cast("tuple[int, int]", self.ref.ask(m.Probe(), timeout=left()))
            if fetches or self.pool.busy:
                self.pool.wait_idle(left())
            elif self.events.wait_idle(left()) and not fired:
                due = cast("float | None", self.scheduler.ask(NextDue(), timeout=left()))
                if due is None or due > clock.now():
                    if handled == expected:
                        return
                    expected = handled + 1
                    continue
            expected = None

    def stop(self, timeout: float) -> None:
        # First the user rotations under way: each is answered and committed before the
        # store closes (bounded by one attempt's deadline), or its refresh token is lost.
        if not self.users.drain(min(timeout, self._redemption_deadline)):
            logger.warning("a user grant rotation was still under way when the system stopped")
        self.pending.close()
        self.closed.set()  # ends the user grants' background commits
        try:
            self._stop_threads(timeout)
        finally:
            # Whatever went wrong above, nothing more is served and every future a caller
            # holds gets its answer.
            if self.snapshot is not None:
                self.snapshot.close()
            self.pending.fail_all()
            if self.owned_session is not None:
                self.owned_session.close()

    def _stop_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.01, deadline - time.monotonic())

        if self.store is not None:
            self.store.close(timeout=left())  # ends lease waits, joins its listener thread
        for ref in (self.ref, self.scheduler):
            try:
                ref.stop(block=True, timeout=left())
            except pykka.Timeout:
                logger.warning("{} did not stop within {:g}s", ref, timeout)
        if self.adapter is not None:
            self.adapter.abort()
        joined = self.pool.shutdown(left())
        self.users.join(left())
        if joined and self.adapter is not None:
            self.adapter.release()  # no worker left to use them: free the descriptors
        self.events.close(left())


def _reopened(store: Store | None) -> tuple[Store | None, str]:
    """A store of this process's own like ``store`` (its ``reopened()``), or None and what the
    WARNING adds about it. The parent's store is never used here: its connection pool may be
    locked by a thread that does not exist in this process, and its sockets are the
    parent's."""
    if store is None:
        return None, ""
    try:
        fresh = store.reopened()
    except NotImplementedError:  # Store's default: this store cannot
        why = "cannot be reopened in this process"
    except Exception as exc:  # the store's bug must not stop token service here
        why = f"could not be reopened in this process ({type(exc).__name__})"
    else:
        if isinstance(fresh, Store):
            return fresh, ""
        why = f"reopened as {type(fresh).__name__}, not a Store"
    return None, f"; its store {store!r} {why}, so tokens are not shared through it here"


def _drop_inherited_connections(session: requests.Session) -> None:
    """Give ``session``'s HTTP adapters new, empty connection pools: the pooled connections
    are sockets the parent uses too (two processes would read one answer), and the pools'
    locks may be held by a parent thread. The old pools are left alone, not closed."""
    for adapter in session.adapters.values():
        if isinstance(adapter, HTTPAdapter):
            adapter.init_poolmanager(
                adapter._pool_connections,  # type: ignore[attr-defined]
                adapter._pool_maxsize,  # type: ignore[attr-defined]
                block=adapter._pool_block,  # type: ignore[attr-defined]
            )
            adapter.proxy_manager = {}


def _apps_by_id(app_or_apps: AppConfig | Iterable[AppConfig]) -> dict[str, AppConfig]:
    if isinstance(app_or_apps, AppConfig):
        apps = [app_or_apps]
    elif isinstance(app_or_apps, Iterable) and not isinstance(app_or_apps, str | bytes):
        apps = list(app_or_apps)
    else:
        msg = f"TokenSystem.start needs an AppConfig or a list of them, got {app_or_apps!r}"
        raise ValueError(msg)
    if not apps:
        msg = "TokenSystem.start needs at least one AppConfig"
        raise ValueError(msg)
    by_id: dict[str, AppConfig] = {}
    for app in apps:
        if not isinstance(app, AppConfig):
            msg = f"apps must be AppConfig instances, got {type(app).__name__}"
            raise ValueError(msg)
        if app.app_id in by_id:
            msg = f"app_id {app.app_id!r} is given twice"
            raise ValueError(msg)
        by_id[app.app_id] = app
    return by_id

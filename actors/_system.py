"""TokenSystem: starts, wires and stops the actors and their threads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Self, cast

import pykka
import requests
from loguru import logger

from actors import _cache as _fork
from actors import _messages as m
from actors._cache import CallerStats, ReadSnapshot
from actors._clock import Clock, SystemClock
from actors._config import AppConfig, RefreshPolicy
from actors._errors import SystemStoppedError
from actors._events import EventHub, Subscriber
from actors._messages import PendingFutures
from actors._metrics import TokenMetrics
from actors._proxy import TokenProxy
from actors._scheduler import NextDue, SchedulerActor, Tick
from actors._source import TokenSource
from actors._token_actor import TokenActor
from actors._upstream import WorkerPool
from actors.feishu._client import FeishuAuthClient
from actors.feishu._sockets import AbortableAdapter
from actors.stores import Store

__all__ = ["TokenSystem"]


class TokenSystem:
    """The running system: a TokenActor, a SchedulerActor, fetch workers and a clock.

    Started with :meth:`start` (the only way). :attr:`proxy` is the token API (futures from its
    plain methods, values from its ``a``-prefixed coroutines); the system's own methods are
    blocking lifecycle and reporting conveniences that return values: :meth:`settle`,
    :meth:`stop`, :meth:`metrics`, :meth:`performance_report`, :meth:`log_performance_metrics`.

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
        self._apps = apps
        self._policy = policy
        self._clock: Clock = clock
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
        self._adapter: AbortableAdapter | None = None
        self._owned_session: requests.Session | None = None
        if source is None:
            source = self._feishu_client(session, policy)
        if store is not None:
            # The shared tier wraps the source: the TokenActor stays the L1, unchanged.
            source = store.wrap(source, policy)  # ValueError if it serves another system
        self._store = store
        self._pending = PendingFutures()
        self._events = EventHub()
        # One worker more than the fetch cap, so an app_ticket resend never queues behind fetches.
        self._pool = WorkerPool(policy.max_concurrent_fetches + 1)
        self._stopped = False
        self._generation = _fork.current()
        callers = CallerStats()
        snapshot = self._snapshot = ReadSnapshot(callers) if fast_reads else None
        self._scheduler: pykka.ActorRef[SchedulerActor] = SchedulerActor.start(clock)
        try:
            self._ref: pykka.ActorRef[TokenActor] = TokenActor.start(
                apps=apps,
                policy=policy,
                clock=clock,
                source=source,
                pool=self._pool,
                scheduler=self._scheduler,
                events=self._events,
                snapshot=snapshot,
                callers=callers,
            )
        except BaseException:
            self._scheduler.stop()
            raise
        self._proxy = TokenProxy(
            self._ref,
            apps=apps,
            clock=clock,
            pending=self._pending,
            snapshot=snapshot,
            callers=callers,
            store=store,
        )
        if store is not None:
            store.attach(self._proxy.invalidate)  # other processes' invalidations drop it here
        logger.bind(apps=list(apps)).debug("TokenSystem started")

    def _feishu_client(
        self, session: requests.Session | None, policy: RefreshPolicy
    ) -> FeishuAuthClient:
        if session is None:
            session = self._owned_session = requests.Session()
            # stop() shuts these sockets down, so no worker stays blocked in a read.
            self._adapter = AbortableAdapter(pool_maxsize=policy.max_concurrent_fetches + 1)
            session.mount("https://", self._adapter)
            session.mount("http://", self._adapter)
        return FeishuAuthClient(session, timeout=policy.request_timeout)

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
        fast_reads: bool = True,
    ) -> Self:
        """Start the actors for one app or several; ValueError names a bad argument.

        ``session`` is the ``requests.Session`` the built-in Feishu client uses; ``source``
        replaces that client with any :class:`TokenSource` (a fake in tests); ``store`` (an
        :class:`actors.stores.Store`, e.g. ``actors.RedisStore``) shares tokens, tickets and
        invalidations between processes.
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
        """The TokenActor's ref, for other actors: tell it a :class:`GetToken`."""
        return self._ref

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

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Deliver TokenRefreshed / RefreshFailed events; returns the unsubscribe function."""
        return self._events.subscribe(subscriber)

    def metrics(self, *, timeout: float = 5.0) -> TokenMetrics:
        """A frozen snapshot of the counters (blocks; ``proxy.metrics()`` is the future)."""
        return self._proxy.metrics().get(timeout=timeout)

    def performance_report(self, *, timeout: float = 5.0) -> str:
        """The counters as a human-readable report."""
        return self.metrics(timeout=timeout).report()

    def log_performance_metrics(self, *, timeout: float = 5.0) -> None:
        """Log :meth:`performance_report` at INFO (once ``logger.enable("actors")``)."""
        logger.info("{}", self.performance_report(timeout=timeout))

    def next_due(self, *, timeout: float = 5.0) -> float | None:
        """When the system next has something to do on its own (the earliest prewarm, retry or
        ticket deadline), on its clock; None when nothing is scheduled. With a ManualClock, a
        simulation advances the clock to this time, settles, and repeats."""
        return cast("float | None", self._scheduler.ask(NextDue(), timeout=timeout))

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

        if self._stopped or self._generation != _fork.current():
            raise SystemStoppedError() if self._stopped else _fork.forked_error()
        try:
            self._settle(left)
        except pykka.ActorDeadError:  # stopped while settling
            raise SystemStoppedError() from None

    def _settle(self, left: Callable[[], float]) -> None:
        # Quiescent once a whole pass saw nothing happen: no timer fired, no fetch running, no
        # event undelivered, nothing due now, and the TokenActor handled no message since the
        # previous pass's Probe but that Probe (its count says so; an empty mailbox would not:
        # the actor may be handling what it just took out of it).
        expected = None
        while True:
            fired = self._scheduler.ask(Tick(), timeout=left())
            fetches, handled = cast("tuple[int, int]", self._ref.ask(m.Probe(), timeout=left()))
            if fetches or self._pool.busy:
                self._pool.wait_idle(left())
            elif self._events.wait_idle(left()) and not fired:
                due = cast("float | None", self._scheduler.ask(NextDue(), timeout=left()))
                if due is None or due > self._clock.now():
                    if handled == expected:
                        return
                    expected = handled + 1
                    continue
            expected = None

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop everything; idempotent. Pending futures fail with SystemStoppedError."""
        if self._stopped:
            return
        self._stopped = True
        self._pending.close()
        # A forked child has none of the parent's threads to stop and must not touch the
        # parent's sockets: answering what is pending there is all there is to do.
        forked = self._generation != _fork.current()
        try:
            if not forked:
                self._stop_threads(timeout)
        finally:
            # Whatever went wrong above, nothing more is served and every future a caller
            # holds gets its answer.
            if self._snapshot is not None:
                self._snapshot.close()
            self._pending.fail_all()
            if self._owned_session is not None and not forked:
                self._owned_session.close()
        logger.debug("TokenSystem stopped")

    def _stop_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.01, deadline - time.monotonic())

        if self._store is not None:
            self._store.close(timeout=left())  # ends lease waits, joins its listener thread
        for ref in (self._ref, self._scheduler):
            try:
                ref.stop(block=True, timeout=left())
            except pykka.Timeout:
                logger.warning("{} did not stop within {:g}s", ref, timeout)
        if self._adapter is not None:
            self._adapter.abort()
        joined = self._pool.shutdown(left())
        if joined and self._adapter is not None:
            self._adapter.release()  # no worker left to use them: free the descriptors
        self._events.close(left())

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

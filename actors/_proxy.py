"""TokenProxy (``system.proxy``): the token API of a TokenSystem, for threads and event loops.

The rule: a plain method returns a ``pykka.Future`` (the sync side: ``.get(timeout=...)``), an
``a``-prefixed one is a coroutine that returns the value (the async side). Every method validates
its arguments and sends at most one message to the TokenActor; a servable cached token (fast
reads) is an already-resolved future, or a value, without a message. Bad arguments fail the
future or the await with ``ValueError``; a stopped system with ``SystemStoppedError``. In a
process forked after the system started, the first call there starts the system's own actors
in that process (``TokenSystem``), and every call is answered by them from then on. The futures
are awaitable too, without blocking the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka

from actors import _cache as _fork
from actors import _messages as m
from actors._cache import SAMPLE_MASK, CallerStats, Cell, Published, ReadSnapshot
from actors._clock import Clock, SystemClock
from actors._config import (
    AppConfig,
    AppType,
    TokenKey,
    TokenKind,
    check_made_at,
    resolve_app,
    resolve_key,
)
from actors._errors import SystemStoppedError
from actors._messages import AsyncWaiter, FutureWaiter, PendingFutures
from actors._messages import failed_future as _failed
from actors._metrics import TokenMetrics
from actors._refresh import SystemHealth, TicketBook
from actors.feishu._jssdk import JssdkPages
from actors.stores import StoreHealth
from actors.users._logins import UserLogins

if TYPE_CHECKING:
    from actors.stores import Store

__all__ = ["TokenProxy", "store_health"]

# Validated argument tuples remembered per proxy; beyond this many distinct ones (a flood of
# tenant keys) the memo starts over instead of growing without bound.
_KEY_MEMO_SIZE = 4096


class TokenProxy(UserLogins, JssdkPages):
    """``system.proxy``: the token API. Plain methods return ``pykka.Future``s, ``a``-prefixed
    methods are coroutines that return values.

    Example:
        >>> token = system.proxy.get_token().get(timeout=5)  # doctest: +SKIP
        >>> token = await system.proxy.aget_token()  # doctest: +SKIP

    ``await system.proxy.get_token()`` works as well and does not block the event loop either:
    the library's futures suspend the awaiting task until the answer arrives.
    """

    def __init__(
        self,
        *,
        apps: dict[str, AppConfig],
        clock: Clock,
        serve_here: Callable[[], object],
    ) -> None:
        self._apps = apps
        self._clock = clock
        # The hit path calls the clock on every get: skip the wrapper for real time.
        self._now: Callable[[], float] = time.monotonic if type(clock) is SystemClock else clock.now
        self._keys: dict[tuple[Any, ...], TokenKey] = {}  # validated arguments
        # In a process forked after start(): starts the system's own there, which calls _serve;
        # raises if it cannot (SystemStoppedError once stopped).
        self._serve_here = serve_here
        # What serves this process, set by _serve: the TokenActor, the futures handed out, the
        # read snapshot (None without fast reads), the callers' counts, the shared tier.
        self._ref: pykka.ActorRef[Any]
        self._pending: PendingFutures
        self._snapshot: ReadSnapshot | None
        self._callers: CallerStats
        self._store: Store | None  # tickets handed to this process serve every process
        self._generation = -1  # the fork generation _serve was called in
        # The newest app_ticket handed over, per app: a forked child's own actors start with it.
        self._tickets = TicketBook()
        self._cells: dict[tuple[Any, ...], Cell] = {}  # arguments -> the key's cell
        # Misses already on their way to the TokenActor, per event loop and key: later awaits
        # of the same key on the same loop join them instead of sending a message each.
        self._awaited: dict[tuple[asyncio.AbstractEventLoop, TokenKey], asyncio.Future[Any]] = {}

    def _serve(
        self,
        ref: pykka.ActorRef[Any],
        pending: PendingFutures,
        snapshot: ReadSnapshot | None,
        callers: CallerStats,
        store: Store | None,
    ) -> None:
        """Serve from this process's system (at start, and in a forked child on first use)."""
        self._ref, self._pending, self._snapshot = ref, pending, snapshot
        self._callers, self._store = callers, store
        self._cells, self._awaited = {}, {}  # the inherited cells serve nothing
        for app_id, ticket, made_at in self._tickets:
            # Feishu pushes the next one only about hourly (docs/feishu-protocol.md).
            ref.tell(m.SetTicket(app_id, ticket, made_at, None))
        self._generation = _fork.current()  # last: a caller seeing it sees all of the above

    def get_token(
        self,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
    ) -> pykka.Future[str]:
        """A future of the token of ``kind`` (a miss fetches; concurrent misses share one fetch);
        ``user`` is the open_id of a user token (``TokenKind.USER``) and required for it.

        With fast reads on (the default), a servable cached token comes back as an
        already-resolved future without a mailbox round trip.
        """
        # The hit path, inlined: ReadSnapshot.lookup does the same steps for a key.
        now = self._now()
        try:
            cell = self._cells.get((kind, tenant_key, app_id, user))
        except TypeError:  # an unhashable argument: the slow path says which one is wrong
            cell = None
        if cell is not None:
            published = cell.published
            if published is not None and now < published.serve_until:
                cell.last_read = now
                if published.refreshing:
                    next(cell.stale)
                if not next(cell.hits) & SAMPLE_MASK:
                    self._snapshot.sample(self._now() - now)  # type: ignore[union-attr]
                return published.future
        return self._get(kind, tenant_key, app_id, user, now)

    async def aget_token(
        self,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
    ) -> str:
        """Await the token of ``kind`` without blocking the event loop.

        A servable cached token is returned at once, on the caller's loop; a miss parks an
        asyncio future that the TokenActor's side resolves through ``call_soon_threadsafe``, and
        concurrent awaits of one key on one loop share it.
        """
        now = self._now()
        try:
            cell = self._cells.get((kind, tenant_key, app_id, user))
        except TypeError:
            cell = None
        if cell is not None:
            published = self._snapshot.hit(cell, now, self._now)  # type: ignore[union-attr]
            if published is not None:
                return published.token
        found = self._prepare(kind, tenant_key, app_id, user, now)
        if isinstance(found, Published):
            return found.token
        if isinstance(found, Exception):
            raise found
        return await self._await_miss(found, now)

    async def _await_miss(self, key: TokenKey, started: float) -> str:
        # 1,000 handlers missing one key on one loop would otherwise each build a waiter and
        # send a message in the same loop iteration, stalling the loop for tens of ms.
        loop = asyncio.get_running_loop()
        shared = self._awaited.get((loop, key))
        if shared is None:
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
            awaited = self._awaited

            def forget(future: asyncio.Future[Any]) -> None:
                # Only this future: a later miss on the loop may have registered its own.
                if awaited.get((loop, key)) is future:
                    awaited.pop((loop, key), None)

            waiter = AsyncWaiter(started, self._pending, loop, on_answer=forget)
            shared = awaited[loop, key] = waiter.future
            self._send(m.Get(key, waiter), waiter)
        else:
            self._callers.coalesced(key.app_id, key.kind)
            shared.add_done_callback(lambda _: self._callers.record(self._now() - started))
        # Shielded: cancelling this await must not cancel the fetch the others wait for.
        token: str = await asyncio.shield(shared)
        return token

    async def aset_app_ticket(
        self, ticket: str, *, app_id: str | None = None, made_at: float | None = None
    ) -> None:
        """``set_app_ticket`` for coroutines."""
        app = _ticket_app(self._apps, ticket, app_id, made_at)
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._tickets.offer(app.app_id, ticket, made_at)
        store = self._store
        if store is not None:
            await asyncio.to_thread(lambda: store.put_ticket(app, ticket, made_at=made_at))
        await self._aask(lambda waiter: m.SetTicket(app.app_id, ticket, made_at, waiter))

    async def ainvalidate(self, token: str) -> bool:
        """``invalidate`` for coroutines: True if ``token`` was the cached one and is dropped."""
        _check_token(token)
        dropped: bool = await self._aask(lambda waiter: m.Invalidate(token, waiter))
        return dropped

    def set_app_ticket(
        self, ticket: str, *, app_id: str | None = None, made_at: float | None = None
    ) -> pykka.Future[None]:
        """Hand over the app_ticket Feishu pushed (marketplace apps); waiting gets resume.

        ``made_at`` is when Feishu made the ticket's event (Unix seconds: the event's
        ``create_time`` / 1000, or ``ts``), if known; ``handle_event`` passes it. A ticket made
        before the one the app holds is ignored, here and in the store (a replayed or late
        delivery never puts an older ticket back), and one without ``made_at`` replaces only a
        ticket that came without it too. The future resolves either way.
        """
        try:
            app = _ticket_app(self._apps, ticket, app_id, made_at)
        except ValueError as exc:
            return _failed(exc)
        refusal = self._refusal()
        if refusal is not None:
            return _failed(refusal)  # and no store is told: this system serves nobody
        self._tickets.offer(app.app_id, ticket, made_at)
        future = self._ask(lambda waiter: m.SetTicket(app.app_id, ticket, made_at, waiter))
        if self._store is not None:
            self._store.put_ticket(app, ticket, made_at=made_at)  # bounded: timeouts, a breaker
        return future

    def invalidate(self, token: str) -> pykka.Future[bool]:
        """Drop ``token`` if it is still the cached one and fetch a fresh one; True if dropped."""
        try:
            _check_token(token)
        except ValueError as exc:
            return _failed(exc)
        return self._ask(lambda waiter: m.Invalidate(token, waiter))

    def metrics(self) -> pykka.Future[TokenMetrics]:
        """A future of a frozen snapshot of the counters."""
        return self._ask(m.Snapshot)

    async def ametrics(self) -> TokenMetrics:
        """``metrics`` for coroutines: a frozen snapshot of the counters."""
        metrics: TokenMetrics = await self._aask(m.Snapshot)
        return metrics

    def health(self) -> pykka.Future[SystemHealth]:
        """A future of the system's health (see ``TokenSystem.health()``). The store is asked
        now, on this thread, for up to one store operation's timeout: in a coroutine, await
        :meth:`ahealth` instead."""
        refusal = self._refusal()  # first: a forked child's first use starts its own store
        if refusal is not None:
            return _failed(refusal)
        store = store_health(self._store)
        return self._ask(lambda waiter: m.Health(waiter, store))

    async def ahealth(self) -> SystemHealth:
        """``health`` for coroutines: the store is asked on a worker thread, never on the loop."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        store = await asyncio.to_thread(store_health, self._store)
        health: SystemHealth = await self._aask(lambda waiter: m.Health(waiter, store))
        return health

    # --- the shared core of the sync and async fronts --------------------------------------------

    def _get(
        self, kind: Any, tenant_key: Any, app_id: Any, user: Any, now: float
    ) -> pykka.Future[str]:
        found = self._prepare(kind, tenant_key, app_id, user, now)
        if isinstance(found, Published):
            return found.future
        if isinstance(found, Exception):
            return _failed(found)
        key = found
        return self._ask(lambda waiter: m.Get(key, waiter))

    def _prepare(
        self, kind: Any, tenant_key: Any, app_id: Any, user: Any, now: float
    ) -> Published | TokenKey | Exception:
        """A get past the memoised hit path: its key (to ask the actor), a servable published
        token after all, or the error to report (bad arguments, a system that cannot serve)."""
        args = (kind, tenant_key, app_id, user)
        try:
            key = self._keys.get(args)
        except TypeError:
            key = None
        if key is None:
            try:
                key = resolve_key(self._apps, kind, tenant_key, app_id, user)
            except ValueError as exc:
                return exc
            _remember(self._keys, args, key)
        if self._generation != _fork.current():
            refusal = self._refusal()  # a forked child's first use starts its own system
            if refusal is not None:
                return refusal
        if self._snapshot is not None:
            cell = self._snapshot.cells.get(key)
            if cell is not None:
                _remember(self._cells, args, cell)
                published = self._snapshot.hit(cell, now, self._now)
                if published is not None:
                    return published
        return key

    def _refusal(self) -> Exception | None:
        if self._generation != _fork.current():
            try:
                self._serve_here()
            except Exception as exc:  # stopped, or this process could not start its own
                return exc
        return SystemStoppedError() if self._pending.closed else None

    def _ask(self, message: Callable[[FutureWaiter], Any]) -> pykka.Future[Any]:
        refusal = self._refusal()
        if refusal is not None:
            return _failed(refusal)
        waiter = FutureWaiter(self._clock.now(), self._pending)
        self._send(message(waiter), waiter)
        return waiter.future

    async def _aask(self, message: Callable[[AsyncWaiter], Any]) -> Any:
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        waiter = AsyncWaiter(self._clock.now(), self._pending, asyncio.get_running_loop())
        self._send(message(waiter), waiter)
        return await waiter.future

    def _send(self, message: Any, waiter: FutureWaiter | AsyncWaiter) -> None:
        try:
            self._ref.tell(message)
        except pykka.ActorDeadError:
            waiter.fail(SystemStoppedError())


def _ticket_app(
    apps: dict[str, AppConfig], ticket: str, app_id: str | None, made_at: float | None
) -> AppConfig:
    """The marketplace app a ticket is handed over for; ValueError for a bad argument."""
    app = resolve_app(apps, app_id)
    if app.app_type is not AppType.MARKETPLACE:
        msg = f"app {app.app_id} is self-built: it has no app_ticket"
        raise ValueError(msg)
    if not isinstance(ticket, str) or not ticket.strip():
        msg = "app_ticket must be a non-empty string"
        raise ValueError(msg)
    check_made_at(made_at)
    return app


def _check_token(token: object) -> None:
    if not isinstance(token, str):
        msg = f"token must be a string, got {type(token).__name__}"
        raise ValueError(msg)


def _remember(memo: dict[tuple[Any, ...], Any], args: tuple[Any, ...], value: Any) -> None:
    if len(memo) >= _KEY_MEMO_SIZE:
        memo.clear()  # bounded: a flood of distinct tenant keys must not grow it forever
    memo[args] = value


def store_health(store: Store | None) -> StoreHealth | None:
    """``store.health()``; a store whose health() itself fails is reported unreachable with
    that failure's class name, never raised to whoever asks for the system's health."""
    if store is None:
        return None
    try:
        return store.health()
    except Exception as exc:
        where = type(store).__name__
        return StoreHealth(
            where=where,
            reachable=False,
            breaker_open=False,
            faults={},
            last_error=type(exc).__name__,
        )

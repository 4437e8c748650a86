"""TokenProxy (``system.proxy``): the caller-side handle of a TokenSystem.

Every method validates its arguments, sends one message to the TokenActor and returns a
``pykka.Future``; a servable cached token (fast reads) comes back as an already-resolved future
without a message. Bad arguments give a future that raises ``ValueError``; a stopped system, or
one used in a process forked after it started, gives one that raises ``SystemStoppedError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pykka

from actors import _fork
from actors import _messages as m
from actors._clock import Clock, SystemClock
from actors._config import AppConfig, AppType, TokenKey, TokenKind, resolve_key
from actors._errors import SystemStoppedError
from actors._metrics import TokenMetrics
from actors._snapshot import SAMPLE_MASK, Cell, ReadSnapshot
from actors._waiters import FutureWaiter, PendingFutures

__all__ = ["TokenProxy"]

# Validated argument tuples remembered per proxy; beyond this many distinct ones (a flood of
# tenant keys) the memo starts over instead of growing without bound.
_KEY_MEMO_SIZE = 4096


class TokenProxy:
    """``system.proxy``: every method sends one message and returns a ``pykka.Future``."""

    def __init__(
        self,
        ref: pykka.ActorRef[Any],
        apps: dict[str, AppConfig],
        clock: Clock,
        pending: PendingFutures,
        snapshot: ReadSnapshot | None,
    ) -> None:
        self._ref = ref
        self._apps = apps
        self._clock = clock
        # The hit path calls the clock on every get: skip the wrapper for real time.
        self._now: Callable[[], float] = time.monotonic if type(clock) is SystemClock else clock.now
        self._pending = pending
        self._snapshot = snapshot
        self._keys: dict[tuple[Any, Any, Any], TokenKey] = {}  # validated arguments
        self._cells: dict[tuple[Any, Any, Any], Cell] = {}  # arguments -> the key's cell
        self._generation = _fork.current()

    def get_token(
        self,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
    ) -> pykka.Future[str]:
        """A future of the token of ``kind`` (a miss fetches; concurrent misses share one fetch).

        With fast reads on (the default), a servable cached token comes back as an
        already-resolved future without a mailbox round trip.
        """
        # The hit path, inlined: ReadSnapshot.lookup does the same steps for a key.
        now = self._now()
        try:
            cell = self._cells.get((kind, tenant_key, app_id))
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
        return self._get(kind, tenant_key, app_id, now)

    def _get(self, kind: Any, tenant_key: Any, app_id: Any, now: float) -> pykka.Future[str]:
        args = (kind, tenant_key, app_id)
        try:
            key = self._keys.get(args)
        except TypeError:
            key = None
        if key is None:
            try:
                key = resolve_key(self._apps, kind, tenant_key, app_id)
            except ValueError as exc:
                return _failed(exc)
            _remember(self._keys, args, key)
        if self._generation != _fork.current():
            return self._in_forked_child(key, now)
        if self._snapshot is not None:
            cell = self._snapshot.cells.get(key)
            if cell is not None:
                _remember(self._cells, args, cell)
                published = self._snapshot.lookup(key, now, self._now)
                if published is not None:
                    return published.future
        return self._ask(lambda waiter: m.Get(key, waiter))

    def set_app_ticket(self, ticket: str, *, app_id: str | None = None) -> pykka.Future[None]:
        """Hand over the app_ticket Feishu pushed (marketplace apps); waiting gets resume."""
        try:
            app = self._apps[resolve_key(self._apps, TokenKind.APP, None, app_id).app_id]
            if app.app_type is not AppType.MARKETPLACE:
                msg = f"app {app.app_id} is self-built: it has no app_ticket"
                raise ValueError(msg)
            if not isinstance(ticket, str) or not ticket.strip():
                msg = "app_ticket must be a non-empty string"
                raise ValueError(msg)
        except ValueError as exc:
            return _failed(exc)
        return self._ask(lambda waiter: m.SetTicket(app.app_id, ticket, waiter))

    def invalidate(self, token: str) -> pykka.Future[bool]:
        """Drop ``token`` if it is still the cached one and fetch a fresh one; True if dropped."""
        if not isinstance(token, str):
            return _failed(ValueError(f"token must be a string, got {type(token).__name__}"))
        return self._ask(lambda waiter: m.Invalidate(token, waiter))

    def metrics(self) -> pykka.Future[TokenMetrics]:
        """A future of a frozen snapshot of the counters."""
        return self._ask(m.Snapshot)

    def _ask(self, message: Callable[[FutureWaiter], Any]) -> pykka.Future[Any]:
        if self._generation != _fork.current():
            return _failed(_fork.forked_error())
        if self._pending.closed:
            return _failed(SystemStoppedError())
        waiter = FutureWaiter(self._clock.now(), self._pending)
        try:
            self._ref.tell(message(waiter))
        except pykka.ActorDeadError:
            waiter.fail(SystemStoppedError())
        return waiter.future

    def _in_forked_child(self, key: TokenKey, now: float) -> pykka.Future[str]:
        published = self._snapshot.lookup(key, now, self._now) if self._snapshot else None
        return published.future if published is not None else _failed(_fork.forked_error())


def _remember(
    memo: dict[tuple[Any, Any, Any], Any], args: tuple[Any, Any, Any], value: Any
) -> None:
    if len(memo) >= _KEY_MEMO_SIZE:
        memo.clear()  # bounded: a flood of distinct tenant keys must not grow it forever
    memo[args] = value


def _failed(error: Exception) -> pykka.Future[Any]:
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    future.set_exception((type(error), error, None))
    return future

"""Refresh events: what happened to which key, never a token value.

Subscribers are callables (run on the library's event thread, never the TokenActor's, so a slow
subscriber cannot stall token service) or pykka ActorRefs (the event arrives as a message).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

import pykka
from loguru import logger

from actors._config import TokenKey, TokenKind
from actors._errors import plain_traceback

__all__ = [
    "EventHub",
    "GrantExpiring",
    "ReauthorizationNeeded",
    "RefreshEvent",
    "RefreshFailed",
    "Subscriber",
    "TokenRefreshed",
]


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRefreshed:
    """A key got a token (``cause``: miss, prewarm, invalidate, keepalive, login); ``user`` is
    the open_id of a user token."""

    app_id: str
    kind: TokenKind
    tenant_key: str | None
    expires_at: float
    cause: str
    user: str | None = None

    @classmethod
    def of(cls, key: TokenKey, expires_at: float, cause: str) -> TokenRefreshed:
        return cls(key.app_id, key.kind, key.tenant_key, expires_at, cause, key.user)


@dataclasses.dataclass(frozen=True, slots=True)
class RefreshFailed:
    """An upstream attempt for a key failed; ``will_retry`` says whether the system tries again."""

    app_id: str
    kind: TokenKind
    tenant_key: str | None
    error: Exception
    will_retry: bool
    user: str | None = None

    @classmethod
    def of(cls, key: TokenKey, error: Exception, *, will_retry: bool) -> RefreshFailed:
        return cls(key.app_id, key.kind, key.tenant_key, error, will_retry, key.user)


@dataclasses.dataclass(frozen=True, slots=True)
class ReauthorizationNeeded:
    """A user's grant ended (``reason`` as in ``ReauthorizationRequired``): send them through
    the login again. Published once per grant by each process that finds it ended."""

    app_id: str
    user: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class GrantExpiring:
    """A user's grant nears Feishu's 365-day limit: no refresh succeeds after
    ``reauthorize_by`` (on the system clock), so have them log in again before then. Published
    once per grant and process, ``RefreshPolicy.user_reauthorize_notice`` ahead."""

    app_id: str
    user: str
    reauthorize_by: float


RefreshEvent = TokenRefreshed | RefreshFailed | ReauthorizationNeeded | GrantExpiring
Subscriber = Callable[[RefreshEvent], Any] | pykka.ActorRef[Any]


class EventHub:
    """Fans events out to subscribers; publish() is cheap when nobody listens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._queue: queue.SimpleQueue[tuple[Callable[[RefreshEvent], Any], RefreshEvent] | None]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        if not (callable(subscriber) or isinstance(subscriber, pykka.ActorRef)):
            msg = (
                f"subscribe() takes a callable or a pykka ActorRef, got {type(subscriber).__name__}"
            )
            raise TypeError(msg)
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

        return unsubscribe

    def publish(self, event: RefreshEvent) -> None:
        for subscriber in self._subscribers:
            if isinstance(subscriber, pykka.ActorRef):
                try:
                    subscriber.tell(event)
                except pykka.ActorDeadError:
                    pass
            else:
                self._enqueue(subscriber, event)

    def _enqueue(self, callback: Callable[[RefreshEvent], Any], event: RefreshEvent) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="actors-events", daemon=True)
                self._thread.start()
        self._queue.put((callback, event))

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            if thread is not threading.current_thread():  # stop() called from a subscriber
                thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            callback, event = item
            try:
                callback(event)
            except Exception as exc:  # a subscriber's bug must not stop the others
                logger.error("event subscriber {!r} raised:\n{}", callback, plain_traceback(exc))
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

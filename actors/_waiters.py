"""Waiters: whoever is owed a token. A pykka future (app code), an asyncio future (a coroutine
on some event loop), a reply message (another actor), or a continuation inside the TokenActor (a
marketplace tenant fetch waiting for its app token).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

import pykka

from actors._errors import SystemStoppedError
from actors._reply import TokenReply

__all__ = [
    "AsyncWaiter",
    "Continuation",
    "FutureWaiter",
    "PendingFutures",
    "ReplyWaiter",
    "Waiter",
]


class Waiter(Protocol):
    started: float
    counted: bool  # a caller's get (counted in hit/miss metrics) or an internal dependency

    def resolve(self, value: Any) -> None: ...

    def fail(self, error: Exception) -> None: ...


def set_future_exception(future: pykka.Future[Any], error: BaseException) -> None:
    try:
        future.set_exception((type(error), error, error.__traceback__))
    except queue.Full:  # already resolved (e.g. by stop()); the first answer stands
        pass


class FutureWaiter:
    __slots__ = ("_pending", "counted", "future", "started")

    def __init__(self, started: float, pending: PendingFutures) -> None:
        self.started = started
        self.counted = True
        self.future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        self._pending = pending
        pending.add(self)

    def resolve(self, token: Any) -> None:
        self._pending.discard(self)
        try:
            self.future.set(token)
        except queue.Full:
            pass

    def fail(self, error: Exception) -> None:
        self._pending.discard(self)
        set_future_exception(self.future, error)


class AsyncWaiter:
    """Resolves an ``asyncio`` future on its own loop, from whichever thread answers.

    No thread is parked per awaiter: the answer is handed to the loop with
    ``call_soon_threadsafe``. A cancelled awaiter's future is simply skipped when the answer
    comes, so cancelling one awaiter affects no other.
    """

    __slots__ = ("_pending", "counted", "future", "loop", "started")

    def __init__(
        self, started: float, pending: PendingFutures, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.started = started
        self.counted = True
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self._pending = pending
        pending.add(self)

    def resolve(self, value: Any) -> None:
        self._pending.discard(self)
        self._hand_over(_set_result, value)

    def fail(self, error: Exception) -> None:
        self._pending.discard(self)
        self._hand_over(_set_exception, error)

    def _hand_over(self, settle: Callable[[asyncio.Future[Any], Any], None], arg: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(settle, self.future, arg)
        except RuntimeError:  # the loop is closed: nobody can be awaiting any more
            pass


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # cancelled by its awaiter, or already failed by stop()
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


class ReplyWaiter:
    __slots__ = ("counted", "reply_to", "started", "tag")

    def __init__(self, started: float, reply_to: pykka.ActorRef[Any], tag: Any) -> None:
        self.started = started
        self.counted = True
        self.reply_to = reply_to
        self.tag = tag

    def _send(self, reply: TokenReply) -> None:
        try:
            self.reply_to.tell(reply)
        except pykka.ActorDeadError:  # the asker is gone; nobody is left to tell
            pass

    def resolve(self, token: str) -> None:
        self._send(TokenReply(self.tag, token, None))

    def fail(self, error: Exception) -> None:
        self._send(TokenReply(self.tag, None, error))


class Continuation:
    """Runs inside the TokenActor when a token it depends on is resolved or fails."""

    __slots__ = ("counted", "on_error", "on_token", "started")

    def __init__(
        self,
        started: float,
        on_token: Callable[[str], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self.started = started
        self.counted = False
        self.on_token = on_token
        self.on_error = on_error

    def resolve(self, token: str) -> None:
        self.on_token(token)

    def fail(self, error: Exception) -> None:
        self.on_error(error)


class PendingFutures:
    """Futures handed to callers (pykka or asyncio) and not yet resolved.

    pykka drops tell()s still in a mailbox when an actor stops, so stop() sweeps what is left
    here: every future a caller holds resolves, if only with SystemStoppedError.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[FutureWaiter | AsyncWaiter] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the system stopped: new requests fail at once instead of being sent."""
        return self._closed

    def add(self, waiter: FutureWaiter | AsyncWaiter) -> None:
        with self._lock:
            self._waiters.add(waiter)

    def discard(self, waiter: FutureWaiter | AsyncWaiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def close(self) -> None:
        self._closed = True

    def fail_all(self) -> int:
        with self._lock:
            waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            waiter.fail(SystemStoppedError())
        return len(waiters)

"""What flows through the TokenActor's mailbox and back.

The public reply protocol for embedding actors (:class:`GetToken` in, :class:`TokenReply`
out; both immutable, since pykka does not copy messages between threads), the futures
handed to callers, the waiters (whoever is owed a token: a pykka future, an asyncio
future, a reply message, or a continuation inside the TokenActor) and the actor's
internal mail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import pykka

from actors._config import AppConfig, TokenKey, TokenKind
from actors._errors import SystemStoppedError, detached, mask_token
from actors._source import Grant

if TYPE_CHECKING:
    from actors.stores import StoreHealth

__all__ = [
    "AsyncWaiter",
    "AwaitableFuture",
    "Continuation",
    "DeferredFuture",
    "FetchDone",
    "ForgetUser",
    "FutureWaiter",
    "Get",
    "GetToken",
    "Health",
    "Invalidate",
    "KeepGrants",
    "PendingFutures",
    "Probe",
    "Redeem",
    "Redeemed",
    "ReplyWaiter",
    "ReportDue",
    "ResendDone",
    "ResolvedFuture",
    "ScanDue",
    "SetTicket",
    "Snapshot",
    "TokenReply",
    "Waiter",
    "Wake",
    "failed_future",
    "resolved_future",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GetToken:
    """Ask the TokenActor for a token without blocking: the answer arrives as a TokenReply.

    Example (inside another pykka actor)::

        system.actor_ref.tell(actors.GetToken(reply_to=self.actor_ref, tag="req-1"))
        ...
        def on_receive(self, message):
            if isinstance(message, actors.TokenReply) and message.tag == "req-1": ...
    """

    reply_to: pykka.ActorRef[Any]
    kind: TokenKind = TokenKind.TENANT
    tenant_key: str | None = None
    app_id: str | None = None
    tag: Any = None
    user: str | None = None  # the open_id, for TokenKind.USER


@dataclasses.dataclass(frozen=True, slots=True)
class TokenReply:
    """The answer to a GetToken: exactly one of ``token`` and ``error`` is set."""

    tag: Any
    token: str | None
    error: Exception | None

    def __repr__(self) -> str:
        return (
            f"TokenReply(tag={self.tag!r}, token={mask_token(self.token)!r}, error={self.error!r})"
        )


T = TypeVar("T")
J = TypeVar("J")
M = TypeVar("M")
R = TypeVar("R")


class AwaitableFuture(pykka.Future[T]):
    """A ``pykka.Future`` an event loop can ``await`` without blocking.

    pykka's own ``__await__`` calls the blocking ``get()``, so ``await system.proxy.get_token()``
    would freeze the loop for a whole fetch. The library's futures instead suspend the awaiting
    task until the answer is there, then return it (or raise its exception). The futures that
    ``map()``/``filter()``/``join()``/``reduce()`` derive from one remember their sources: awaiting
    a derived future awaits those, then runs pykka's get hook, which no longer waits.
    """

    _sources: tuple[pykka.Future[Any], ...] = ()

    def map(self, func: Callable[[T], M]) -> pykka.Future[M]:
        return _derived(super().map(func), self)

    def filter(
        self: AwaitableFuture[Iterable[J]], func: Callable[[J], bool]
    ) -> pykka.Future[Iterable[J]]:
        return _derived(super().filter(func), self)

    def join(self, *futures: pykka.Future[Any]) -> pykka.Future[Iterable[Any]]:
        return _derived(super().join(*futures), self, *futures)

    def reduce(
        self: AwaitableFuture[Iterable[J]], func: Callable[[R, J], R], *args: R
    ) -> pykka.Future[R]:
        return _derived(super().reduce(func, *args), self)

    def __await__(self) -> Generator[Any, None, T]:
        if self._sources:
            for source in self._sources:
                yield from source.__await__()
        else:
            yield from self._answered()
        return self.get()

    __iter__ = __await__

    def _answered(self) -> Generator[Any, None, None]:
        """Suspend the awaiting task until this future has its answer."""
        return
        yield  # a generator that finishes at once: this future is born answered


def _derived(future: pykka.Future[M], *sources: pykka.Future[Any]) -> pykka.Future[M]:
    cast("AwaitableFuture[M]", future)._sources = sources  # pykka made it with self.__class__()
    return future


class ResolvedFuture(AwaitableFuture[T]):
    """A ``pykka.Future`` born with its value: ``get()`` returns it at once, no lock, no wait,
    and ``await`` returns it without suspending.

    Built on ``pykka.Future``'s public behaviour only. pykka's ``map()``/``filter()``/``join()``/
    ``reduce()`` make new futures with ``self.__class__()`` and give them a get hook: without a
    value, ``get()`` defers to ``pykka.Future.get``, which runs that hook.
    """

    __slots__ = ("_value",)

    def __init__(self, *value: T) -> None:
        super().__init__()
        self._value = value

    def get(self, *, timeout: float | None = None) -> T:
        if self._value:
            return self._value[0]
        return super().get(timeout=timeout)

    def set(self, value: Any = None) -> None:
        msg = "a ResolvedFuture is resolved on creation; it cannot be set again"
        raise RuntimeError(msg)

    def set_exception(self, exc_info: Any = None) -> None:
        msg = "a ResolvedFuture is resolved on creation; it cannot fail afterwards"
        raise RuntimeError(msg)


def failed_future(error: Exception) -> pykka.Future[Any]:
    """A future that already holds ``error``."""
    future: DeferredFuture[Any] = DeferredFuture()
    future.set_exception((type(error), error, None))
    return future


def resolved_future(value: T) -> ResolvedFuture[T]:
    """An already-resolved ``pykka.Future`` holding ``value``, cheap to make."""
    return ResolvedFuture(value)


class DeferredFuture(AwaitableFuture[T], pykka.ThreadingFuture[T]):
    """The ``pykka.ThreadingFuture`` a caller holds while the TokenActor works on its request.

    ``get()`` blocks the calling thread, as pykka's does. An awaiting task instead parks an
    asyncio future on its own loop, which ``set()``/``set_exception()`` resolve through
    ``loop.call_soon_threadsafe`` from whichever thread answers: no thread is parked per awaiter,
    and cancelling one awaiter leaves the future and its other awaiters alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()  # orders "answered" against an awaiter parking itself
        self._answer_given = False
        self._parked: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def set(self, value: Any = None) -> None:
        super().set(value)  # queue.Full if already answered: the first answer stands
        self._wake()

    def set_exception(self, exc_info: Any = None) -> None:
        super().set_exception(exc_info)
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            self._answer_given = True
            parked, self._parked = self._parked, []
        for loop, answered in parked:
            try:
                loop.call_soon_threadsafe(_set_result, answered, None)
            except RuntimeError:  # the loop is closed: nobody can be awaiting any more
                pass

    def _answered(self) -> Generator[Any, None, None]:
        with self._lock:
            if self._answer_given:
                return
            loop = asyncio.get_running_loop()
            answered: asyncio.Future[None] = loop.create_future()
            self._parked.append((loop, answered))
        yield from answered.__await__()


class Waiter(Protocol):
    started: float
    counted: bool  # a caller's get (counted in hit/miss metrics) or an internal dependency

    def resolve(self, value: Any) -> None: ...

    def fail(self, error: Exception) -> None: ...


def set_future_exception(future: pykka.Future[Any], error: BaseException) -> None:
    # A copy without frames (actors._errors.detached); pykka's get() raises it from the
    # caller's own frames when the traceback handed over is None.
    fresh = detached(error)
    try:
        future.set_exception((type(fresh), fresh, None))
    except queue.Full:  # already resolved (e.g. by stop()); the first answer stands
        pass


class FutureWaiter:
    __slots__ = ("_pending", "counted", "future", "started")

    def __init__(self, started: float, pending: PendingFutures) -> None:
        self.started = started
        self.counted = True
        self.future: DeferredFuture[Any] = DeferredFuture()
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

    ``on_answer`` runs on the answering thread as the answer is handed over: whoever keeps
    the future for later awaiters lets go of it there, not in a callback on the loop, which a
    loop closed meanwhile never runs (and the future would keep the loop alive).
    """

    __slots__ = ("_on_answer", "_pending", "counted", "future", "loop", "started")

    def __init__(
        self,
        started: float,
        pending: PendingFutures,
        loop: asyncio.AbstractEventLoop,
        *,
        on_answer: Callable[[asyncio.Future[Any]], None] | None = None,
    ) -> None:
        self.started = started
        self.counted = True
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self._pending = pending
        self._on_answer = on_answer
        pending.add(self)

    def resolve(self, value: Any) -> None:
        self._answered()
        self._hand_over(_set_result, value)

    def fail(self, error: Exception) -> None:
        self._answered()
        self._hand_over(_set_exception, error)

    def _answered(self) -> None:
        self._pending.discard(self)
        if self._on_answer is not None:
            self._on_answer(self.future)

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
        future.set_exception(detached(error))


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
        self._send(TokenReply(self.tag, None, detached(error)))


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


@dataclasses.dataclass(frozen=True, slots=True)
class Get:
    key: TokenKey
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class SetTicket:
    app_id: str
    ticket: str = dataclasses.field(repr=False)
    made_at: float | None  # when Feishu made the ticket's event (Unix seconds), if known
    waiter: Waiter | None


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidate:
    token: str = dataclasses.field(repr=False)
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class Redeem:
    """A login's authorization code to exchange for a user grant."""

    app: AppConfig
    code: str = dataclasses.field(repr=False)
    redirect_uri: str
    code_verifier: str | None = dataclasses.field(repr=False)
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class Redeemed:
    """A worker redeemed a login: the token to cache for ``key`` (``grant``), and the answer
    for the waiter (a UserGrant or the error)."""

    key: TokenKey | None
    grant: Grant | None
    started_at: float
    answer: object
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class ForgetUser:
    key: TokenKey
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class KeepGrants:
    """Grants found in the store: (key, when its refresh token expires on the system clock)."""

    grants: tuple[tuple[TokenKey, float], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    """Asks for the system's health; ``store`` is the store's own, read by the asker (it may
    block for a store operation's timeout, which the actor never does)."""

    waiter: Waiter
    store: StoreHealth | None


@dataclasses.dataclass(frozen=True, slots=True)
class FetchDone:
    """A worker finished one upstream attempt for ``key``: a Grant or the exception it raised."""

    key: TokenKey
    result: Grant | Exception
    started_at: float
    latency: float


@dataclasses.dataclass(frozen=True, slots=True)
class ResendDone:
    app_id: str
    error: Exception | None
    ticket: str | None = dataclasses.field(default=None, repr=False)  # the source had one


@dataclasses.dataclass(frozen=True, slots=True)
class Wake:
    """A key's timer is due: a prewarm, a retry's backoff or an app_ticket wait's deadline,
    whichever the key's refresh state says; ``timer_id`` tells a stale one from its current."""

    key: TokenKey
    timer_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class ScanDue:
    """Time to list the store's user grants again (to keep them alive from here too)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ReportDue:
    """Time to log the periodic performance report."""


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    """settle() asks this: how many fetches are queued or in flight, and how many messages the
    TokenActor handled before this one."""

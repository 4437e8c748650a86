"""The read path every shared store has in common: the shared tier first, one process per key
upstream under a lease, the others wait for its value.

A store is a :class:`SharedStore`: it provides the few operations that need its storage (read
the value or take the lease, write a value, renew and release leases, read and write
app_tickets), each one atomic and each one answering or raising :class:`Unavailable`, and
inherits what such a store does for its system whatever it keeps values in (one system per
store, the listener thread, closing, sharing app_tickets, turning another process's
invalidation notice into a call for the token this process was handed).
:class:`SharedSource` is the :class:`~actors._source.TokenSource` a TokenSystem uses with the
store; :class:`Renewer` keeps the leases of this process alive while it fetches. Keys and
value checks are the stores' common :mod:`actors.stores._layout`.
"""

from __future__ import annotations

import abc
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from loguru import logger

import actors.stores._layout as layout
from actors._config import AppConfig, RefreshPolicy, TokenKind
from actors._errors import SystemStoppedError, UpstreamError
from actors._source import Grant, TokenRequest, TokenSource
from actors.feishu import _protocol as feishu
from actors.stores._base import Ledger, Store, token_digest
from actors.stores._health import FaultLog
from actors.stores._layout import Keys

__all__ = [
    "Acquired",
    "Ask",
    "Listener",
    "Renewer",
    "SharedSource",
    "SharedStore",
    "Unavailable",
    "wall_ms",
]


def wall_ms() -> int:
    """Now on the wall clock, in Unix milliseconds."""
    return time.time_ns() // 1_000_000


class Unavailable(Exception):
    """The store did not answer (or is skipped for now): fall back to the wrapped source."""


class Acquired(NamedTuple):
    kind: str  # value | lease | wait
    token: str
    pttl_ms: int  # the value's remaining lifetime, the lease taken, or the lease's rest
    version: int  # the key's write version when it was read


class Ask(NamedTuple):
    """One read of a key by :meth:`SharedStore.acquire`: its arguments, and the digest of the
    token to invalidate (empty if none)."""

    lease_id: str
    lease_ms: int
    replaces: str
    min_ms: int
    since: int
    invalidate: str
    digest: str


class Listener(Protocol):
    """A store's notice listener: :meth:`run` (on the store's thread, until the store closes)
    calls :meth:`SharedStore.deliver_notice` for each notice it reads."""

    listening: threading.Event  # notices posted from now on reach it

    def run(self) -> None: ...


_RENEWALS_PER_LEASE = 5  # renewals that may be missed (a busy host) before a lease lapses


class SharedStore(Store):
    """A store that shares tokens between processes, whatever it keeps them in: one system
    per store, a listener thread for the notices, a renewer for the leases held, closing,
    and sharing app_tickets. A subclass calls :meth:`_setup` first thing, and provides the
    storage operations :class:`SharedSource` needs (:meth:`keys`, :meth:`_acquire`,
    :meth:`write`, :meth:`renew`, :meth:`release`, :meth:`get_ticket`), and
    :meth:`ticket_key`, :meth:`_listener`, :meth:`_write_ticket`, :meth:`_failing` and
    :meth:`_disconnect`. Every storage operation is atomic and either answers or raises
    :class:`Unavailable`; a bad value is the store's to report (``faults``) and to
    overwrite, never a reason to fail."""

    ticket_poll: float | None
    faults: FaultLog

    def _setup(self, *, name: str, lease: float, ticket_poll: float | None, threads: str) -> None:
        """``name``: the store's name in its log lines; ``threads``: the stem of the store's
        thread names (``actors-<store>``)."""
        self._log = logger.bind(component=name)
        self._lease = lease
        self._lease_ms = max(1, round(lease * 1000))
        self.ticket_poll = ticket_poll
        self._closed = threading.Event()
        self._id = secrets.token_hex(8)  # tells this store's own notices from the others'
        self._lock = threading.Lock()
        self._threads = threads
        self._thread: threading.Thread | None = None
        self._notices: Listener | None = None
        self._ledger = Ledger()  # shared with the source: tokens handed out, tokens dead
        self._renewer = Renewer(
            self,
            every=lease / _RENEWALS_PER_LEASE,
            closed=self._closed,
            name=f"{threads}-leases",
        )
        self._apps: dict[str, AppConfig] = {}  # the apps served, for put_ticket(app_id)
        self.faults = FaultLog(store=name)

    # --- the storage operations ----------------------------------------------------------------

    @abc.abstractmethod
    def keys(self, app: AppConfig, kind: TokenKind, tenant_key: str | None) -> Keys:
        """Where the token of ``app``, ``kind`` and ``tenant_key`` is kept, with its lease."""

    @abc.abstractmethod
    def _acquire(self, keys: Keys, ask: Ask) -> Acquired:
        """:meth:`acquire`, its arguments in ``ask``."""

    @abc.abstractmethod
    def write(
        self, keys: Keys, token: str, ttl_ms: int, seen: int, *, min_ms: int = 0
    ) -> tuple[bool, str, int]:
        """Compare-and-set: (written, the token kept, its remaining ms). Another usable token
        stays if it outlives ``min_ms`` and was written after version ``seen``; the same token
        is rewritten but never with a longer lifetime."""

    @abc.abstractmethod
    def renew(self, held: Sequence[tuple[Keys, str]]) -> None:
        """Extend each of these (keys, lease id) leases that is still held by that id."""

    @abc.abstractmethod
    def release(self, keys: Keys, lease_id: str) -> None:
        """Drop the lease if ``lease_id`` still holds it; never raises."""

    @abc.abstractmethod
    def get_ticket(self, app: AppConfig) -> str | None:
        """The app_ticket kept for ``app``, if a usable one is."""

    def acquire(
        self,
        keys: Keys,
        lease_id: str,
        *,
        lease_ms: int,
        replaces: str,
        min_ms: int,
        since: int,
        invalidate: str = "",
    ) -> Acquired:
        """Serve the stored value, or take the lease, or say how long the lease has left.

        A usable value is served if it outlives ``min_ms`` and is not ``replaces``, or
        (``since`` >= 0) if it was written after version ``since``. ``invalidate``: first
        drop that token from the store (if it still holds exactly it) and tell every process,
        once per token."""
        digest = token_digest(invalidate) if invalidate else ""
        ask = Ask(lease_id, lease_ms, replaces, min_ms, since, invalidate, digest)
        return self._acquire(keys, ask)

    @abc.abstractmethod
    def ticket_key(self, app: AppConfig) -> str:
        """Where ``app``'s app_ticket is kept."""

    @abc.abstractmethod
    def _listener(self, on_notice: Callable[[str], object]) -> Listener:
        """The listener :meth:`attach` runs on the store's thread."""

    @abc.abstractmethod
    def _write_ticket(self, key: str, ticket: str, *, made_at_ms: int | None, ttl_ms: int) -> bool:
        """Keep the newest app_ticket at ``key`` (see :meth:`Store.put_ticket`), for
        ``ttl_ms``: whether it was written; raises :class:`Unavailable`."""

    @abc.abstractmethod
    def _post_notice(self, digest: str) -> None:
        """Post an invalidation notice of the token with this digest, from this store, to
        every process (not tied to a key's version); raises :class:`Unavailable`."""

    @abc.abstractmethod
    def _failing(self) -> bool:
        """Whether the store is skipped for now (its backend failed) rather than asked."""

    @abc.abstractmethod
    def _disconnect(self, *, deadline: float) -> None:
        """Release the store's connections (its threads have stopped); waits for anything
        else of its own until ``deadline`` (on the monotonic clock) at most."""

    # --- the system's side ---------------------------------------------------------------------

    def wrap(self, source: TokenSource, policy: RefreshPolicy) -> SharedSource:
        """The token source a TokenSystem uses with this store: ``source`` behind the store."""
        if not isinstance(source, TokenSource):
            msg = f"{type(self).__name__}.wrap needs a TokenSource, got {source!r}"
            raise ValueError(msg)
        with self._lock:
            self._refuse_reuse()
        return SharedSource(self, source, policy, ledger=self._ledger, closed=self._closed)

    def attach(self, on_notice: Callable[[str], object]) -> None:
        """Start listening for invalidation notices; ``on_notice(token)`` is called (on the
        listener thread) for each token this process was handed and another one invalidated.
        One store serves one TokenSystem."""
        with self._lock:
            self._refuse_reuse()
            self._notices = self._listener(on_notice)
            self._thread = threading.Thread(
                target=self._notices.run, name=f"{self._threads}-notices", daemon=True
            )
            self._thread.start()

    def _refuse_reuse(self) -> None:
        name = type(self).__name__
        if self._closed.is_set():
            msg = f"this {name} is closed; make a new one"
            raise ValueError(msg)
        if self._thread is not None:
            msg = f"this {name} already serves a TokenSystem; give each system its own"
            raise ValueError(msg)

    def close(self, *, timeout: float = 2.0) -> None:
        """Stop the store's threads, end every wait and release the connections. Idempotent."""
        self._closed.set()
        self._renewer.stop()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [self._thread, self._renewer.thread]
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._disconnect(deadline=deadline)

    def put_ticket(
        self, app: AppConfig | str, ticket: str, *, made_at: float | None = None
    ) -> bool:
        """Share the app_ticket the application received, unless the store holds a newer one
        (see :meth:`Store.put_ticket`); kept 12 h from ``made_at`` (or from now). False if it
        was not written: the store is failing, holds a newer ticket, or the ticket is not one
        the store may hold (it still serves this process)."""
        if not isinstance(ticket, str) or not ticket.strip():
            msg = "app_ticket must be a non-empty string"
            raise ValueError(msg)
        made_at_ms = layout.made_at_ms(made_at)
        if isinstance(app, AppConfig):
            self.serves(app)
            config: AppConfig | None = app
        else:
            config = self.served(app)
        app_id = config.app_id if config is not None else str(app)
        self._ledger.use_ticket(app_id, ticket)
        if config is None:
            self._log.debug(
                "app_ticket of {} not shared: the store has not served that app", app_id
            )
            return False
        key = self.ticket_key(config)
        if not layout.shareable(ticket):
            self.faults.report(key, "not printable ASCII, or too long", what="app_ticket")
            return False
        ttl_ms = layout.ticket_ttl_ms(made_at_ms, now_ms=wall_ms())
        if ttl_ms <= 0:
            self._log.debug("app_ticket of {} not shared: made over 12 h ago", app_id)
            return False
        try:
            written = self._write_ticket(key, ticket, made_at_ms=made_at_ms, ttl_ms=ttl_ms)
        except Unavailable:
            return False
        if not written:
            self._log.debug("app_ticket of {} not shared: the store holds a newer one", app_id)
        return written

    def handed(self, token: str) -> None:
        """``token`` went to this process's cache from elsewhere than the shared tier (a user's
        grant): another process's notice about it reaches this one too."""
        self._ledger.handed(token)

    def announce(self, token: str) -> bool:
        """Tell every other process to stop serving ``token`` (a user logged out): whether the
        notice went out."""
        digest = token_digest(token)
        self._ledger.note_dead(digest, -1)
        try:
            self._post_notice(digest)
        except Unavailable:
            return False
        return True

    def served(self, app_id: str) -> AppConfig | None:
        """The config of ``app_id`` if this store has served that app (:meth:`serves`)."""
        with self._lock:
            return self._apps.get(app_id)

    def serves(self, app: AppConfig) -> None:
        """Remember ``app``'s config, for calls that name it by app_id only."""
        with self._lock:
            self._apps[app.app_id] = app

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def deliver_notice(self, raw: object, on_notice: Callable[[str], object]) -> None:
        """Act on another process's invalidation notice (``raw``, as read): remember the token
        as dead and, if this process was handed it, drop it here (``on_notice``). Anyone who
        can post a notice may post anything, so nothing in it may stop the listener. The
        store's own notices are ignored: the process that invalidated has dropped the token
        already."""
        notice = layout.parse_notice(raw)
        if notice is None:
            self._log.debug("ignored a malformed invalidation notice")
            return
        if notice.origin == self._id:
            return
        self._ledger.note_dead(notice.digest, notice.version)
        token = self._ledger.token(notice.digest)
        if token is None:
            return  # never cached here
        try:
            on_notice(token)
        except Exception as exc:
            self._log.warning("invalidation notice could not be delivered: {}", type(exc).__name__)

    # --- the tier's common part ----------------------------------------------------------------

    @property
    def lease(self) -> float:
        return self._lease

    @property
    def lease_ms(self) -> int:
        return self._lease_ms

    @property
    def renewer(self) -> Renewer:
        return self._renewer


class Renewer:
    """Keeps the leases this process holds alive while it fetches, so that a holder that was
    killed or paused is noticed within one lease, however long a live fetch may take.

    One thread per store, started with the first lease held, renewing every held lease each
    ``every`` seconds until its ``until`` (the longest a fetch may take) or its release.
    """

    def __init__(
        self, tier: SharedStore, *, every: float, closed: threading.Event, name: str
    ) -> None:
        self._tier = tier
        self._every = every
        self._closed = closed
        self._name = name
        self._cond = threading.Condition()
        self._held: dict[str, tuple[Keys, float]] = {}  # lease id -> (keys, renew until)
        self.thread: threading.Thread | None = None

    def hold(self, keys: Keys, lease_id: str, *, until: float) -> None:
        with self._cond:
            self._held[lease_id] = (keys, until)
            if self.thread is None and not self._closed.is_set():
                self.thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self.thread.start()
            self._cond.notify()

    def drop(self, lease_id: str) -> None:
        with self._cond:
            self._held.pop(lease_id, None)

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        while not self._closed.is_set():
            with self._cond:
                while not self._held and not self._closed.is_set():
                    self._cond.wait()
                now = time.monotonic()
                due = [(keys, i) for i, (keys, until) in self._held.items() if until > now]
            if due:
                try:
                    self._tier.renew(due)
                except Unavailable:
                    pass  # the leases lapse; another process takes over
            self._closed.wait(self._every)


# A shared value is served only with this much more than the safety margin left, so that the
# reader's clock, counting from before the read, still finds it servable.
_SLACK_MS = 500
_POLL_FIRST, _POLL_MAX = 0.005, 0.05  # a loser's polls for the holder's value
_TICKET_POLL_MAX = 0.25


class SharedSource:
    """The :class:`TokenSource` of a TokenSystem with a shared store: the store first, one
    process per key upstream (``inner``), the others wait for its value.

    It shares the store's ``ledger`` (tokens it hands out, tokens dead) with the notice
    listener, and the store's ``closed`` event ends its waits.
    """

    def __init__(
        self,
        tier: SharedStore,
        inner: TokenSource,
        policy: RefreshPolicy,
        *,
        ledger: Ledger,
        closed: threading.Event,
    ) -> None:
        self._tier = tier
        self._inner = inner
        self._ledger = ledger
        self._closed = closed
        # The longest a live holder fetches (one attempt's timeouts, and some) while renewing.
        self._hold_for = sum(policy.request_timeout) + 2.0
        self._max_wait = 3 * (self._hold_for + tier.lease)  # a holder, and two after it died
        self._min_ms = round(policy.safety_margin * 1000) + _SLACK_MS
        poll = tier.ticket_poll
        self._ticket_poll = poll if poll is not None else policy.ticket_wait / 2

    def fetch(self, request: TokenRequest) -> Grant:
        if self._closed.is_set():
            raise SystemStoppedError()
        tier = self._tier
        tier.serves(request.app)
        keys = tier.keys(request.app, request.kind, request.tenant_key)
        since, invalidate = -1, ""
        if request.cause == "invalidate" and request.replaces:
            noticed = self._ledger.noticed_at(request.replaces)
            if noticed is None:  # found invalid here: drop it from the store, tell the others
                invalidate = request.replaces
                self._ledger.note_dead(token_digest(invalidate), -1)
            else:  # another process's notice: it dropped the value; serve what came since
                since = noticed
        try:
            return self._shared(request, keys, since, invalidate)
        except Unavailable:
            pass
        if self._closed.is_set():
            raise SystemStoppedError()
        # The store is failing: this process fetches for itself (its TokenActor still
        # single-flights).
        return self._handed(self._inner.fetch(request))

    def _shared(self, request: TokenRequest, keys: Keys, since: int, invalidate: str) -> Grant:
        """``since`` < 0: the first read never serves ``request.replaces``; later reads (and a
        first one with ``since`` >= 0) do if it was written after version ``since``.
        ``invalidate``: the first read drops that token from the store and tells the others."""
        tier = self._tier
        lease_id = secrets.token_hex(16)
        excluded = request.replaces or ""
        give_up_at: float | None = None
        delay = _POLL_FIRST
        while True:
            got = tier.acquire(
                keys,
                lease_id,
                lease_ms=tier.lease_ms,
                replaces=excluded,
                min_ms=self._min_ms,
                since=since,
                invalidate=invalidate,
            )
            invalidate = ""
            if since < 0:
                since = got.version
            if got.kind == "value":
                if got.token == excluded or not self._ledger.is_dead(got.token):
                    return self._handed(Grant(got.token, got.pttl_ms / 1000))
                excluded, since = got.token, got.version  # invalidated elsewhere a moment ago
                continue
            if got.kind == "lease":
                return self._hold(request, keys, lease_id, got.version)
            now = time.monotonic()
            if give_up_at is None:
                give_up_at = now + self._max_wait
            elif now >= give_up_at:
                detail = "shared store: no token from the processes holding the lease"
                raise UpstreamError(None, None, 1, detail=detail)
            if self._closed.wait(min(delay, max(got.pttl_ms, 1) / 1000)):
                raise SystemStoppedError()
            delay = min(delay * 2, _POLL_MAX)

    def _hold(self, request: TokenRequest, keys: Keys, lease_id: str, seen: int) -> Grant:
        tier = self._tier
        started = time.monotonic()  # before the request leaves: the lifetime counts from here
        tier.renewer.hold(keys, lease_id, until=started + self._hold_for)
        try:
            grant = self._inner.fetch(request)
        except BaseException:
            tier.renewer.drop(lease_id)
            tier.release(keys, lease_id)
            raise
        answer = grant
        try:
            ttl_ms = self._shared_ttl_ms(grant, started)
            if ttl_ms is not None and not layout.shareable(grant.token):
                tier.faults.report(keys.value, "a token from upstream the store cannot hold")
            elif ttl_ms is not None:
                written, kept, pttl = tier.write(
                    keys, grant.token, ttl_ms, seen, min_ms=self._min_ms
                )
                if not written and kept != request.replaces and not self._ledger.is_dead(kept):
                    answer = Grant(kept, pttl / 1000)  # a longer-lived token is shared already
        except Unavailable:
            pass  # the store went away meanwhile: the grant is still good for this process
        finally:
            tier.renewer.drop(lease_id)
            tier.release(keys, lease_id)  # after the write: waiters find the value first
        return self._handed(answer)

    def _shared_ttl_ms(self, grant: Grant, started: float) -> int | None:
        """What is left of ``grant`` now, counted from before its request left (a holder
        paused after the answer came writes what is really left, never its stale lifetime);
        None for a lifetime not to share. A lifetime the TokenActor will refuse (NaN, longer
        than Feishu's, within the margin) is not shared: the caller gets the grant and
        reports the failed attempt."""
        expire = grant.expire
        if not feishu.usable_expire(expire) or expire * 1000 > layout.TOKEN_TTL_MAX_MS:
            return None
        left_ms = math.floor((expire - (time.monotonic() - started)) * 1000)
        return left_ms if left_ms > self._min_ms else None

    def _handed(self, grant: Grant) -> Grant:
        """``grant``, remembered as gone to this process's cache (for the notices)."""
        self._ledger.handed(grant.token)
        return grant

    def resend_ticket(self, app: AppConfig) -> str | None:
        """The stored app_ticket if this process has not used it yet; otherwise ask Feishu to
        push it again and wait (up to ``ticket_poll``) for a process to share a new one."""
        tier = self._tier
        tier.serves(app)
        try:
            first = tier.get_ticket(app)
        except Unavailable:
            return self._inner.resend_ticket(app)
        if first is not None and first != self._ledger.ticket(app.app_id):
            self._ledger.use_ticket(app.app_id, first)
            return first
        pushed = self._inner.resend_ticket(app)
        if isinstance(pushed, str) and pushed:
            tier.put_ticket(app, pushed)
            return pushed
        deadline = time.monotonic() + self._ticket_poll
        delay = 0.05
        while (left := deadline - time.monotonic()) > 0:
            if self._closed.wait(min(delay, left)):
                return None
            delay = min(delay * 2, _TICKET_POLL_MAX)
            try:
                ticket = tier.get_ticket(app)
            except Unavailable:
                return None
            if ticket is not None and ticket != first:
                self._ledger.use_ticket(app.app_id, ticket)
                return ticket
        return None

"""What every store shares: the contract a TokenSystem relies on, and the process's ledger.

A store never forks the TokenActor's logic. It wraps the system's :class:`TokenSource` (the
shared tier first, upstream only when no process has a usable value), shares the app_tickets
handed to this process, and tells the system about tokens other processes invalidated. The
:class:`Ledger` is the memory a store's source and its notice listener share within one process.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import hashlib
import json
import threading
import time
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from actors._config import AppConfig, RefreshPolicy
from actors._source import TokenSource

if TYPE_CHECKING:
    from actors.stores._grants import GrantBook

__all__ = ["Ledger", "Store", "StoreHealth", "credentials_digest", "token_digest"]


class Store(abc.ABC):
    """The seam between a TokenSystem and a store (``TokenSystem.start(app, store=...)``).

    The system calls, in this order: :meth:`wrap` once while it starts, :meth:`attach` once its
    proxy exists, :meth:`put_ticket` for each app_ticket handed to it, :meth:`close` when it
    stops. One store serves one system: a second ``wrap`` or ``attach`` raises ValueError.
    :meth:`health` may be called at any time, from any thread. In a process forked from the one
    that made the store, the system calls :meth:`reopened` and uses only the store it returns.
    """

    @abc.abstractmethod
    def wrap(self, source: TokenSource, policy: RefreshPolicy) -> TokenSource:
        """The token source the system uses with this store: ``source`` behind the store."""

    @abc.abstractmethod
    def attach(self, on_notice: Callable[[str], object]) -> None:
        """Start receiving invalidation notices: ``on_notice(token)`` (on a store thread) for
        each token this process was handed and another process invalidated."""

    @abc.abstractmethod
    def put_ticket(
        self, app: AppConfig | str, ticket: str, *, made_at: float | None = None
    ) -> bool:
        """Share the app_ticket the application received for ``app`` (its config; an app_id
        only names an app the store has served already); False if the store is unreachable,
        cannot share it, or holds a newer one (the ticket still serves this process).

        ``made_at``: when Feishu made the app_ticket event (Unix seconds), if known. The store
        keeps the newest ticket: one made before the stored one's ``made_at`` is not written,
        and one without ``made_at`` replaces only a stored one without it too (a replayed or
        delayed delivery never puts an older ticket back)."""

    @abc.abstractmethod
    def close(self, *, timeout: float = 2.0) -> None:
        """End every wait, stop the store's threads (within ``timeout``) and release its
        connections. Idempotent."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called."""

    def reopened(self) -> Store:
        """A store with this one's configuration, for the current process, which was forked
        from the process that made this one: its own connections, threads and locks, not
        wrapped or attached yet.

        It must not take any lock of this store, use or close its connections, or join its
        threads (they are the parent's: a lock held by a parent thread at the fork stays held
        here forever); it returns quickly and connects on first use. A store that cannot do
        this raises NotImplementedError (this default): the forked process's system then
        serves without a store, and logs that it does."""
        msg = f"{type(self).__name__} cannot be reopened in a forked process"
        raise NotImplementedError(msg)

    def serves(self, app: AppConfig) -> None:  # noqa: B027 - a hook: most stores need no list
        """The system serves ``app``: a store that names apps by app_id (its grant book, its
        tickets) remembers the config. Called once per app while the system starts."""

    def handed(self, token: str) -> None:  # noqa: B027 - a hook: a store without notices
        """``token`` went to this process's cache from the grant book (a user token): a notice
        from another process about it reaches this one too."""

    def announce(self, token: str) -> bool:
        """Tell every other process to stop serving ``token`` (its user logged out); whether a
        notice went out (this default: a store that sends none)."""
        del token
        return False

    def grants(self) -> GrantBook | None:
        """Where this store keeps user grants (``actors.stores._grants.GrantBook``), durably and
        shared by every process using it; None (this default) for a store that keeps none (the
        system then keeps them in memory, with a WARNING at the first login)."""
        return None

    def health(self) -> StoreHealth:
        """What the store can tell about itself now, cheaply: never blocks for longer than one
        store operation's timeout. This default knows only whether the store is open."""
        return StoreHealth(
            where=type(self).__name__,
            reachable=not self.closed,
            breaker_open=False,
            faults={},
            last_error=None,
        )


@dataclasses.dataclass(frozen=True)
class StoreHealth:
    """A store's state, for health checks and dashboards; it holds no secret.

    Attributes:
        where: What the store talks to, as its repr shows it (a URL's password is never in it).
        reachable: Whether the store answered lately: a probe within one operation's timeout,
            or the last operation's outcome while the breaker is open.
        breaker_open: Whether the circuit breaker skips the store (each process fetches its
            own tokens meanwhile).
        faults: How many unusable values the store found and ignored, by fault.
        last_error: The class name of the store's last failure, if any (never its message,
            which may quote a value or an address with credentials).
    """

    where: str
    reachable: bool
    breaker_open: bool
    faults: Mapping[str, int]
    last_error: str | None

    def __post_init__(self) -> None:
        # A snapshot: neither the store nor a reader may change it afterwards.
        object.__setattr__(self, "faults", types.MappingProxyType(dict(self.faults)))


def token_digest(token: str) -> str:
    """What a notice or a ledger entry carries instead of the token: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def credentials_digest(app: AppConfig) -> str:
    """Whose tokens a shared key holds: the app's domain, id and secret, as a labelled sha256
    (hex). The same app_id on Feishu and on Lark, on a staging URL or with another secret never
    shares a key. The secret itself goes nowhere; it is long and random, so its digest gives
    nothing to guess from.

    A keyless app has no secret, and its provider is code that differs per process while
    signing for the same registered key: its digest is of the domain and id under a label of
    its own, so every process of the app shares its keys and none shares them with the same
    app_id configured with a secret."""
    if app.keyless:
        parts = json.dumps([app.base_url, app.app_id]).encode()
        return hashlib.sha256(b"lark-token-actors keyless credentials v1\0" + parts).hexdigest()
    parts = json.dumps([app.base_url, app.app_id, app.app_secret]).encode()
    return hashlib.sha256(b"lark-token-actors credentials v1\0" + parts).hexdigest()


_HANDED_MAX = 4096  # tokens remembered by digest, to act on invalidation notices
_DEAD_MAX = 4096  # invalidations remembered: anyone may publish notices, so a bounded number
_DEAD_FOR = 60.0  # how long a noticed invalidation keeps a token from being served here


class Ledger:
    """What this process handed out and what it heard is dead.

    Tokens handed to the cache (by digest, to act on notices that carry only a digest), tokens
    lately invalidated here or elsewhere (never served again meanwhile), and the app_ticket this
    process last used per app (never handed back as new when Feishu refused it). Both token
    memories are bounded in size and the dead one in time too, each step O(1): a flood of
    notices costs what it carries and pushes out only the oldest entries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handed: collections.OrderedDict[str, str] = collections.OrderedDict()
        # digest -> (until, the key's version of another process's notice, or -1), oldest first
        self._dead: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self._tickets: dict[str, str] = {}  # app_id -> the ticket this process last used

    def handed(self, token: str) -> None:
        digest = token_digest(token)
        with self._lock:
            self._handed[digest] = token
            self._handed.move_to_end(digest)
            while len(self._handed) > _HANDED_MAX:
                self._handed.popitem(last=False)

    def token(self, digest: str) -> str | None:
        with self._lock:
            return self._handed.get(digest)

    def is_dead(self, token: str) -> bool:
        """Whether ``token`` was invalidated, here or by a notice, within the last minute."""
        return self._entry(token) is not None

    def noticed_at(self, token: str) -> int | None:
        """The key's version when another process invalidated ``token``, if it did lately: it
        has dropped the shared value already, and a value written since may be served."""
        entry = self._entry(token)
        return entry[1] if entry is not None and entry[1] >= 0 else None

    def note_dead(self, digest: str, version: int) -> None:
        """``version``: the key's version in another process's notice; -1 for one found here."""
        now = time.monotonic()
        with self._lock:
            dead = self._dead
            dead[digest] = (now + _DEAD_FOR, version)
            dead.move_to_end(digest)
            # Every entry lives _DEAD_FOR from its insertion: the oldest expire first.
            while dead and (len(dead) > _DEAD_MAX or next(iter(dead.values()))[0] <= now):
                dead.popitem(last=False)

    def dead_count(self) -> int:
        with self._lock:
            return len(self._dead)

    def ticket(self, app_id: str) -> str | None:
        with self._lock:
            return self._tickets.get(app_id)

    def use_ticket(self, app_id: str, ticket: str) -> None:
        with self._lock:
            self._tickets[app_id] = ticket

    def _entry(self, token: str) -> tuple[float, int] | None:
        digest = token_digest(token)
        with self._lock:
            entry = self._dead.get(digest)
        return entry if entry is not None and time.monotonic() < entry[0] else None

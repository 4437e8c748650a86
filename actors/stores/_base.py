"""What every store shares: the contract a TokenSystem relies on, and the process's ledger.

A store never forks the TokenActor's logic. It wraps the system's :class:`TokenSource` (the
shared tier first, upstream only when no process has a usable value), shares the app_tickets
handed to this process, and tells the system about tokens other processes invalidated. The
:class:`Ledger` is the memory a store's source and its notice listener share within one process.
"""

from __future__ import annotations

import abc
import collections
import hashlib
import json
import threading
import time
from collections.abc import Callable

from actors._config import AppConfig, RefreshPolicy
from actors._source import TokenSource

__all__ = ["Ledger", "Store", "credentials_digest", "token_digest"]


class Store(abc.ABC):
    """The seam between a TokenSystem and a store (``TokenSystem.start(app, store=...)``).

    The system calls, in this order: :meth:`wrap` once while it starts, :meth:`attach` once its
    proxy exists, :meth:`put_ticket` for each app_ticket handed to it, :meth:`close` when it
    stops. One store serves one system: a second ``wrap`` or ``attach`` raises ValueError.
    """

    @abc.abstractmethod
    def wrap(self, source: TokenSource, policy: RefreshPolicy) -> TokenSource:
        """The token source the system uses with this store: ``source`` behind the store."""

    @abc.abstractmethod
    def attach(self, on_notice: Callable[[str], object]) -> None:
        """Start receiving invalidation notices: ``on_notice(token)`` (on a store thread) for
        each token this process was handed and another process invalidated."""

    @abc.abstractmethod
    def put_ticket(self, app: AppConfig | str, ticket: str) -> bool:
        """Share the app_ticket the application received for ``app`` (its config; an app_id
        only names an app the store has served already); False if the store is unreachable
        or cannot share it (the ticket still serves this process)."""

    @abc.abstractmethod
    def close(self, *, timeout: float = 2.0) -> None:
        """End every wait, stop the store's threads (within ``timeout``) and release its
        connections. Idempotent."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called."""


def token_digest(token: str) -> str:
    """What a notice or a ledger entry carries instead of the token: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def credentials_digest(app: AppConfig) -> str:
    """Whose tokens a shared key holds: the app's domain, id and secret, as a labelled sha256
    (hex). The same app_id on Feishu and on Lark, on a staging URL or with another secret never
    shares a key. The secret itself goes nowhere; it is long and random, so its digest gives
    nothing to guess from."""
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

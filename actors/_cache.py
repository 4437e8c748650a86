"""The TokenActor's cache: one :class:`Entry` per key, each in an explicit refresh state.

Only the TokenActor's thread touches it. Every mutator that changes what a reader may be served
(the token, its expiry, whether a refresh is under way) publishes the entry to the read snapshot
itself, so no code path can forget to.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

from actors._config import AppConfig, TokenKey
from actors._snapshot import ReadSnapshot
from actors._waiters import Waiter

__all__ = ["Entry", "RefreshState", "TokenCache"]


class RefreshState(enum.Enum):
    IDLE = "idle"  # no refresh under way
    FETCHING = "fetching"  # an upstream request is queued or in flight
    AWAITING_APP_TOKEN = "awaiting_app_token"  # marketplace tenant token: step one first
    AWAITING_TICKET = "awaiting_ticket"  # marketplace app token: Feishu asked to resend the ticket
    RETRY_SCHEDULED = "retry_scheduled"  # an attempt failed; the next one waits for its backoff


class Entry:
    """One key: its token, expiry, refresh state, waiters and timers."""

    __slots__ = (
        "_cache",
        "_state",
        "app",
        "attempts",
        "cause",
        "dropped_token",
        "expires_at",
        "key",
        "last_read",
        "prewarm_timer",
        "retry_timer",
        "ticket_used",
        "token",
        "waiters",
    )

    def __init__(self, key: TokenKey, app: AppConfig, cache: TokenCache) -> None:
        self.key = key
        self.app = app
        self._cache = cache
        self._state = RefreshState.IDLE
        self.token: str | None = None
        self.dropped_token: str | None = None  # the last token dropped (invalidated): never again
        self.expires_at = 0.0
        self.waiters: list[Waiter] = []
        self.cause = "miss"
        self.attempts = 0  # upstream requests made by the refresh under way
        self.last_read = 0.0
        self.ticket_used: str | None = None  # the app_ticket the last app-token request carried
        self.prewarm_timer: int | None = None
        self.retry_timer: int | None = None

    @property
    def state(self) -> RefreshState:
        return self._state

    @property
    def busy(self) -> bool:
        """A refresh is under way (in any of its states): a new get joins it."""
        return self._state is not RefreshState.IDLE

    def begin(self, cause: str) -> None:
        """Start a refresh for ``cause`` (miss, prewarm, invalidate)."""
        self.cause = cause
        self.attempts = 0
        self.enter(RefreshState.FETCHING)

    def enter(self, state: RefreshState) -> None:
        was_busy = self.busy
        self._state = state
        if self.busy != was_busy:
            self._cache.publish(self)

    def store(self, token: str, expires_at: float) -> bool:
        """A refresh succeeded: serve ``token`` until ``expires_at``. True if it is the same."""
        same = token == self.token
        self._cache.reindex(self, token)
        self.token, self.dropped_token = token, None
        self.expires_at = expires_at
        self.attempts = 0
        self._state = RefreshState.IDLE
        self._cache.publish(self)
        return same

    def end_refresh(self) -> None:
        """The refresh under way ended without a token; what is cached stays."""
        self.attempts = 0
        self.enter(RefreshState.IDLE)

    def drop_token(self) -> None:
        if self.token is None:
            return
        self._cache.reindex(self, None)
        self.dropped_token, self.token = self.token, None
        self.expires_at = 0.0
        self._cache.publish(self)

    def take_waiters(self) -> list[Waiter]:
        waiters, self.waiters = self.waiters, []
        return waiters

    def __repr__(self) -> str:
        return f"<Entry {self.key.describe()} {self._state.value} expires_at={self.expires_at:g}>"


class TokenCache:
    """Entries by key, keys by token (for invalidation), and the read snapshot they publish to."""

    def __init__(self, *, safety_margin: float, snapshot: ReadSnapshot | None) -> None:
        self._margin = safety_margin
        self._snapshot = snapshot
        self._entries: dict[TokenKey, Entry] = {}
        self._by_token: dict[str, TokenKey] = {}

    def __iter__(self) -> Iterator[Entry]:
        # A copy: answering an entry's waiters can end another entry's refresh, which may
        # remove that entry (a marketplace tenant whose app-token step failed).
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: TokenKey) -> Entry | None:
        return self._entries.get(key)

    def entry(self, key: TokenKey, app: AppConfig) -> Entry:
        """The key's entry, created idle and empty on first use."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = Entry(key, app, self)
        return entry

    def holding(self, token: str) -> Entry | None:
        """The entry whose current token is exactly ``token``, if any."""
        key = self._by_token.get(token)
        entry = self._entries.get(key) if key is not None else None
        return entry if entry is not None and entry.token == token else None

    def remove(self, entry: Entry) -> None:
        entry.drop_token()
        del self._entries[entry.key]
        if self._snapshot is not None:
            self._snapshot.withdraw(entry.key)

    def last_read(self, entry: Entry) -> float:
        """When the key was last read, by the mailbox path or a fast read."""
        fast = self._snapshot.last_read(entry.key) if self._snapshot is not None else None
        return entry.last_read if fast is None else max(entry.last_read, fast)

    def reindex(self, entry: Entry, token: str | None) -> None:
        if entry.token is not None and entry.token != token:
            self._by_token.pop(entry.token, None)
        if token is not None:
            self._by_token[token] = entry.key

    def publish(self, entry: Entry) -> None:
        if self._snapshot is not None:
            serve_until = entry.expires_at - self._margin
            self._snapshot.publish(entry.key, entry.token, serve_until, refreshing=entry.busy)

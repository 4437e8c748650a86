"""The token cache: one :class:`Entry` per key in an explicit refresh state, and the read
snapshot that answers hits without a mailbox round trip (with the counts callers' threads
keep themselves), and fork detection: a process forked after a system started serves nothing
from the snapshots it copied; its first use of the system starts one of its own there.
"""

from __future__ import annotations

import enum
import os
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple

from actors._config import AppConfig, TokenKey
from actors._messages import ResolvedFuture, Waiter
from actors._metrics import LatencyHistogram, Tally
from actors._source import TokenRequest

__all__ = [
    "SAMPLE_EVERY",
    "CallerStats",
    "Cell",
    "Entry",
    "Published",
    "ReadSnapshot",
    "RefreshState",
    "TokenCache",
    "current",
    "process_lock",
    "serve_until",
]


class RefreshState(enum.Enum):
    IDLE = "idle"  # no refresh under way
    FETCHING = "fetching"  # an upstream request is queued or in flight
    AWAITING_APP_TOKEN = "awaiting_app_token"  # marketplace tenant token: step one first
    AWAITING_TICKET = "awaiting_ticket"  # marketplace app token: Feishu asked to resend the ticket
    RETRY_SCHEDULED = "retry_scheduled"  # an attempt failed; the next one waits for its backoff


def serve_until(expires_at: float, safety_margin: float) -> float:
    """The servability rule: a token is served while ``now < expires_at - safety_margin``.

    This is that bound, computed once per token. Every check compares ``now`` with it: an
    entry's :meth:`Entry.servable`, the read snapshot's cell (``Published.serve_until``, the
    same number), and the outcome decision, for a token about to be cached.
    """
    return expires_at - safety_margin


class Entry:
    """One key: its token, expiry, refresh state, waiters and its one pending timer."""

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
        "refresh_until",
        "serve_until",
        "ticket_used",
        "timer",
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
        self.serve_until = float("-inf")  # serve_until(expires_at, margin); -inf without a token
        self.waiters: list[Waiter] = []
        self.cause = "miss"
        self.attempts = 0  # upstream requests made by the refresh under way
        self.last_read = 0.0
        self.ticket_used: str | None = None  # the app_ticket the last app-token request carried
        self.refresh_until: float | None = None  # a user token's refresh token expires then
        # The key's one pending timer (prewarm, retry backoff or app_ticket deadline: which one
        # its state says), by id; a delivery with another id is stale.
        self.timer: int | None = None

    @property
    def state(self) -> RefreshState:
        return self._state

    @property
    def busy(self) -> bool:
        """A refresh is under way (in any of its states): a new get joins it."""
        return self._state is not RefreshState.IDLE

    def servable(self, now: float) -> bool:
        """Whether the cached token may be served at ``now`` (see :func:`serve_until`)."""
        return now < self.serve_until

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
        self.serve_until = serve_until(expires_at, self._cache.safety_margin)
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
        self.expires_at, self.serve_until = 0.0, float("-inf")
        self._cache.publish(self)

    def take_waiters(self) -> list[Waiter]:
        waiters, self.waiters = self.waiters, []
        return waiters

    def request(
        self, *, app_ticket: str | None, app_token: str | None, tenant_token: str | None
    ) -> TokenRequest:
        """The upstream request for this key's refresh (marketplace: with its ticket or app
        token), naming the token it must not be answered with."""
        return TokenRequest(
            app=self.app,
            kind=self.key.kind,
            tenant_key=self.key.tenant_key,
            user=self.key.user,
            app_ticket=app_ticket,
            app_token=app_token,
            tenant_token=tenant_token,
            cause=self.cause,
            replaces=self.token if self.token is not None else self.dropped_token,
        )

    def __repr__(self) -> str:
        return f"<Entry {self.key.describe()} {self._state.value} expires_at={self.expires_at:g}>"


class TokenCache:
    """Entries by key, keys by token (for invalidation), and the read snapshot they publish to."""

    def __init__(self, *, safety_margin: float, snapshot: ReadSnapshot | None) -> None:
        self.safety_margin = safety_margin
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
            self._snapshot.publish(entry.key, entry.token, entry.serve_until, refreshing=entry.busy)


SAMPLE_EVERY = 64  # one hit in this many (per key) is timed
SAMPLE_MASK = SAMPLE_EVERY - 1


class Published(NamedTuple):
    token: str
    serve_until: float  # the entry's serve_until: servable while now < serve_until
    refreshing: bool  # a refresh is under way: a hit now is a stale-while-revalidate hit
    future: ResolvedFuture[str]  # handed to every hit on this token


class Cell:
    """One key's published token and its fast-read counters; readers hold on to cells."""

    __slots__ = ("hits", "key", "last_read", "published", "stale")

    def __init__(self, key: TokenKey) -> None:
        self.key = key
        self.published: Published | None = None
        self.hits = Tally()
        self.stale = Tally()
        self.last_read = float("-inf")  # written by readers (last write wins), for idle eviction


class ReadSnapshot:
    """Written by the TokenActor, read by any thread."""

    def __init__(self, stats: CallerStats) -> None:
        self.cells: dict[TokenKey, Cell] = {}
        self._retired_hits: Counter[tuple[str, str]] = Counter()  # of cells withdrawn
        self._retired_stale = 0
        self._stats = stats
        _snapshots.add(self)  # closed in a forked child: its actors are not there

    # --- readers ---------------------------------------------------------------------------------

    def lookup(self, key: TokenKey, now: float, clock: Callable[[], float]) -> Published | None:
        """The key's published token if it may be served at ``now`` (counting the hit).

        ``now`` is when the caller's get began, on ``clock``; a sampled hit is timed from it.
        (``TokenProxy.get_token`` inlines ``hit`` for its memoised cells: one call less.)
        """
        cell = self.cells.get(key)
        return None if cell is None else self.hit(cell, now, clock)

    def hit(self, cell: Cell, now: float, clock: Callable[[], float]) -> Published | None:
        """The cell's published token if it may be served at ``now`` (counting the hit)."""
        published = cell.published
        if published is None or not now < published.serve_until:  # Entry.servable, inlined
            return None
        cell.last_read = now
        if published.refreshing:
            next(cell.stale)
        if not next(cell.hits) & SAMPLE_MASK:
            self.sample(clock() - now)
        return published

    def sample(self, seconds: float) -> None:
        """Record one sampled hit's latency (about one hit in ``SAMPLE_EVERY``)."""
        self._stats.sample(seconds)

    # --- the TokenActor ------------------------------------------------------------------------

    def publish(
        self, key: TokenKey, token: str | None, serve_until: float, *, refreshing: bool
    ) -> None:
        cell = self.cells.get(key)
        if token is None:
            if cell is not None:
                cell.published = None
            return
        if cell is None:
            cell = self.cells[key] = Cell(key)
        old = cell.published
        future = old.future if old is not None and old.token == token else ResolvedFuture(token)
        cell.published = Published(token, serve_until, refreshing, future)

    def withdraw(self, key: TokenKey) -> None:
        """The key is gone (idle eviction): forget its cell, keep its counts."""
        cell = self.cells.pop(key, None)
        if cell is not None:
            cell.published = None
            self._retired_hits[key.app_id, key.kind] += cell.hits.value()
            self._retired_stale += cell.stale.value()

    def close(self) -> None:
        """The system stopped: nothing more is served from here."""
        for cell in list(self.cells.values()):
            cell.published = None

    def last_read(self, key: TokenKey) -> float | None:
        cell = self.cells.get(key)
        return cell.last_read if cell is not None else None

    # --- metrics: readers may be counting while these add up; every figure is a lower bound -----

    def hits(self) -> dict[tuple[str, str], int]:
        """Hits answered from the snapshot so far, per (app_id, kind)."""
        total = Counter(self._retired_hits)
        for cell in list(self.cells.values()):
            total[cell.key.app_id, cell.key.kind] += cell.hits.value()
        return {group: n for group, n in total.items() if n}

    def stale_hits(self) -> int:
        return self._retired_stale + sum(c.stale.value() for c in list(self.cells.values()))


class CallerStats:
    def __init__(self) -> None:
        self._local = threading.local()
        self._histograms: list[LatencyHistogram] = []
        self._sampled: list[LatencyHistogram] = []
        self._register = threading.Lock()
        self._generation = current()
        self._coalesced: dict[tuple[str, str], Tally] = {}

    def record(self, seconds: float) -> None:
        """One get's latency, measured on the caller's thread."""
        self._histogram("histogram", self._histograms).record(seconds)

    def sample(self, seconds: float) -> None:
        """One sampled fast hit's latency: the sampled ones stand for all fast hits."""
        self._histogram("sampled", self._sampled).record(seconds)

    def _histogram(self, name: str, registry: list[LatencyHistogram]) -> LatencyHistogram:
        if self._generation != current():
            return LatencyHistogram()  # a forked child: the lock may be held by a parent thread
        histogram: LatencyHistogram | None = getattr(self._local, name, None)
        if histogram is None:
            histogram = LatencyHistogram()
            setattr(self._local, name, histogram)
            with self._register:  # once per thread
                registry.append(histogram)
        return histogram

    def coalesced(self, app_id: str, kind: str) -> None:
        """A get joined one already on its way to the TokenActor from the same event loop."""
        counter = self._coalesced.get((app_id, kind))
        if counter is None:
            counter = self._coalesced.setdefault((app_id, kind), Tally())
        next(counter)

    def coalesced_counts(self) -> dict[tuple[str, str], int]:
        return {group: c.value() for group, c in list(self._coalesced.items())}

    def latency(self, *, fast_hits: int) -> LatencyHistogram:
        """Every get measured on callers' threads: the exact ones, and the sampled fast hits
        scaled to ``fast_hits`` (their exact count), so the histogram's count is the number of
        gets it describes."""
        with self._register:
            exact, sampled = list(self._histograms), list(self._sampled)
        merged = LatencyHistogram()
        for histogram in exact:
            merged = merged.merged(histogram)
        hits = LatencyHistogram()
        for histogram in sampled:
            hits = hits.merged(histogram)
        return merged.merged(hits.scaled_to(fast_hits))


_generation = 0
_snapshots: weakref.WeakSet[ReadSnapshot] = weakref.WeakSet()
_process_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Runs in the child before fork() returns there, with one thread: nothing can be racing.
    global _generation, _process_lock  # noqa: PLW0603 - one process-wide state is the point
    _generation += 1
    _process_lock = threading.Lock()  # the parent's may be held by a thread gone here
    # The tokens the copied snapshots hold would be served with nobody here to refresh them:
    # every get misses instead, and the first one starts this process's own system.
    for snapshot in list(_snapshots):
        snapshot.close()


os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> int:
    """The fork generation of this process: 0 in the original, +1 in each forked child."""
    return _generation


def process_lock() -> threading.Lock:
    """A lock made in this process (a new one in each forked child): held while a system
    starts its own actors in a forked child, so two threads there never both do."""
    return _process_lock

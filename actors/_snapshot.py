"""The read snapshot: cache hits answered without a mailbox round trip.

The TokenActor stays the only writer of the cache. After every change it publishes an immutable
``PublishedToken`` per key into a plain dict; callers read it with one ``dict.get`` (atomic under
the GIL) and, while the token is still servable, get an already-resolved future. Everything
else (misses, expired entries, refresh decisions) still goes through the actor's mailbox.
The snapshot carries ``serve_until`` (``expires_at - safety_margin``), so validity is checked at
read time against the clock, exactly as the actor would.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import NamedTuple

from actors._clock import Clock
from actors._config import TokenKey
from actors._metrics import LatencyHistogram

__all__ = ["PublishedToken", "ReadSnapshot"]


class PublishedToken(NamedTuple):
    token: str
    serve_until: float
    refreshing: bool  # a refresh is under way: a hit now is a stale-while-revalidate hit


class _ThreadStats:
    """One reader thread's counters: only that thread writes them, so no lock is needed."""

    __slots__ = ("hits", "latency", "stale")

    def __init__(self) -> None:
        self.hits: Counter[tuple[str, str]] = Counter()
        self.stale = 0
        self.latency = LatencyHistogram()


class ReadSnapshot:
    """Written by the TokenActor, read by any thread."""

    def __init__(self) -> None:
        self.entries: dict[TokenKey, PublishedToken] = {}
        # Written by readers (last write wins), read by the actor for idle eviction.
        self.reads: dict[TokenKey, float] = {}
        # Hit counters are per thread: a shared lock on every hit made callers queue behind
        # each other (a convoy under the GIL), and ``+= 1`` on shared ints loses counts.
        self._local = threading.local()
        self._all_stats: list[_ThreadStats] = []
        self._register = threading.Lock()

    def lookup(self, key: TokenKey, started: float, clock: Clock) -> str | None:
        """The token if it may be served now (counting the hit and its latency), else None.

        ``started`` is when the caller's get began, on ``clock``.
        """
        published = self.entries.get(key)
        if published is None or started >= published.serve_until:
            return None
        self.reads[key] = started
        try:
            stats: _ThreadStats = self._local.stats
        except AttributeError:
            stats = self._local.stats = _ThreadStats()
            with self._register:  # once per thread
                self._all_stats.append(stats)
        stats.hits[key.app_id, key.kind] += 1
        stats.stale += published.refreshing
        stats.latency.record(clock.now() - started)
        return published.token

    def publish(
        self, key: TokenKey, token: str | None, serve_until: float, *, refreshing: bool
    ) -> None:
        if token is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = PublishedToken(token, serve_until, refreshing)

    def withdraw(self, key: TokenKey) -> None:
        self.entries.pop(key, None)
        self.reads.pop(key, None)

    def _stats(self) -> list[_ThreadStats]:
        with self._register:
            return list(self._all_stats)

    # Readers may be counting while these sum up: each copy (dict(), list()) is a single C-level
    # operation under the GIL, so a sum is a consistent lower bound, never a torn value.

    def hits(self) -> dict[tuple[str, str], int]:
        """Hits answered from the snapshot so far, per (app_id, kind)."""
        total: Counter[tuple[str, str]] = Counter()
        for stats in self._stats():
            total.update(dict(stats.hits))
        return dict(total)

    def stale_hits(self) -> int:
        return sum(stats.stale for stats in self._stats())

    def latency(self) -> LatencyHistogram:
        merged = LatencyHistogram()
        for stats in self._stats():
            merged = merged.merged(stats.latency)
        return merged

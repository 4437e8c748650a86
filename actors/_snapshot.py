"""The read snapshot: cache hits answered without a mailbox round trip.

The TokenActor stays the only writer of the cache. After every change it publishes an immutable
:class:`Published` record into the key's :class:`Cell`: the token, ``serve_until``
(``expires_at - safety_margin``, so validity is still checked at read time against the clock,
exactly as the actor would), whether a refresh is under way, and one already-resolved future
shared by every hit on that token. A hit is then a dict lookup, an attribute read, a comparison
and two C-level counter increments. Everything else (misses, expired entries, refresh decisions)
still goes through the actor's mailbox.

Counting stays exact without a lock: ``next(itertools.count)`` is one C call, atomic under the
GIL, so concurrent readers never lose a count. Hit latency is *sampled* (one hit in
``SAMPLE_EVERY`` per key is timed, into a per-thread histogram, weighted by ``SAMPLE_EVERY``), so
hit-latency percentiles come from samples while the counts stay exact (``_caller_stats``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from actors._caller_stats import CallerStats, counted
from actors._config import TokenKey
from actors._futures import ResolvedFuture

__all__ = ["SAMPLE_EVERY", "Cell", "Published", "ReadSnapshot"]

SAMPLE_EVERY = 64  # one hit in this many (per key) is timed
SAMPLE_MASK = SAMPLE_EVERY - 1


class Published(NamedTuple):
    token: str
    serve_until: float
    refreshing: bool  # a refresh is under way: a hit now is a stale-while-revalidate hit
    future: ResolvedFuture[str]  # handed to every hit on this token


class Cell:
    """One key's published token and its fast-read counters; readers hold on to cells."""

    __slots__ = ("hits", "key", "last_read", "published", "stale")

    def __init__(self, key: TokenKey) -> None:
        self.key = key
        self.published: Published | None = None
        self.hits = itertools.count()
        self.stale = itertools.count()
        self.last_read = float("-inf")  # written by readers (last write wins), for idle eviction


class ReadSnapshot:
    """Written by the TokenActor, read by any thread."""

    def __init__(self, stats: CallerStats) -> None:
        self.cells: dict[TokenKey, Cell] = {}
        self._retired_hits: Counter[tuple[str, str]] = Counter()  # of cells withdrawn
        self._retired_stale = 0
        self._stats = stats

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
        if published is None or now >= published.serve_until:
            return None
        cell.last_read = now
        if published.refreshing:
            next(cell.stale)
        if not next(cell.hits) & SAMPLE_MASK:
            self.sample(clock() - now)
        return published

    def sample(self, seconds: float) -> None:
        """Record one sampled hit's latency, standing for ``SAMPLE_EVERY`` hits."""
        self._stats.record(seconds, weight=SAMPLE_EVERY)

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
            self._retired_hits[key.app_id, key.kind] += counted(cell.hits)
            self._retired_stale += counted(cell.stale)

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
            total[cell.key.app_id, cell.key.kind] += counted(cell.hits)
        return {group: n for group, n in total.items() if n}

    def stale_hits(self) -> int:
        return self._retired_stale + sum(counted(c.stale) for c in list(self.cells.values()))

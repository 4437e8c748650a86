"""Counts the callers' threads keep themselves, without a message to the TokenActor.

Fast-read hits are timed one in ``SAMPLE_EVERY`` (into a histogram per thread, so readers never
queue on a shared lock), and awaits that joined another await of the same key on the same event
loop are counted as coalesced. Counters are ``itertools.count`` objects: ``next()`` is one C
call, atomic under the GIL, so concurrent callers never lose a count.
"""

from __future__ import annotations

import itertools
import threading

from actors import _fork
from actors._metrics import LatencyHistogram

__all__ = ["CallerStats", "counted"]


def counted(counter: itertools.count[int]) -> int:
    """How many times ``next()`` was called on ``counter``, without calling it (repr: count(N))."""
    return int(repr(counter)[6:-1])


class CallerStats:
    def __init__(self) -> None:
        self._local = threading.local()
        self._histograms: list[LatencyHistogram] = []
        self._register = threading.Lock()
        self._generation = _fork.current()
        self._coalesced: dict[tuple[str, str], itertools.count[int]] = {}

    def record(self, seconds: float, *, weight: int = 1) -> None:
        """One get's latency (a sample standing for ``weight`` gets), on the caller's thread."""
        if self._generation != _fork.current():
            return  # a forked child: the registration lock may be held by a parent thread
        try:
            histogram: LatencyHistogram = self._local.histogram
        except AttributeError:
            histogram = self._local.histogram = LatencyHistogram()
            with self._register:  # once per thread
                self._histograms.append(histogram)
        histogram.record(seconds, weight=weight)

    def coalesced(self, app_id: str, kind: str) -> None:
        """A get joined one already on its way to the TokenActor from the same event loop."""
        counter = self._coalesced.get((app_id, kind))
        if counter is None:
            counter = self._coalesced.setdefault((app_id, kind), itertools.count())
        next(counter)

    def coalesced_counts(self) -> dict[tuple[str, str], int]:
        return {group: counted(c) for group, c in list(self._coalesced.items())}

    def latency(self) -> LatencyHistogram:
        with self._register:
            histograms = list(self._histograms)
        merged = LatencyHistogram()
        for histogram in histograms:
            merged = merged.merged(histogram)
        return merged

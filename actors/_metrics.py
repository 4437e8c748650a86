"""Metrics: counters owned by the TokenActor (its only writer, so no locks), bounded latency
histograms, a frozen snapshot and a readable performance report."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["KindMetrics", "LatencyHistogram", "LatencySummary", "MetricsRecorder", "TokenMetrics"]

_MIN_SECONDS = 1e-6
_GROWTH = 1.08  # bucket width: percentiles are exact to within 8%
_BUCKETS = int(math.log(1e4 / _MIN_SECONDS) / math.log(_GROWTH)) + 2  # 1 µs .. ~3 h


class LatencyHistogram:
    """Log-bucketed histogram: constant memory whatever the traffic, ~8% relative precision."""

    __slots__ = ("_counts", "count", "max", "total")

    def __init__(self) -> None:
        self._counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    @staticmethod
    def _bucket(seconds: float) -> int:
        if seconds <= _MIN_SECONDS:
            return 0
        return min(_BUCKETS - 1, 1 + int(math.log(seconds / _MIN_SECONDS) / math.log(_GROWTH)))

    def record(self, seconds: float, *, weight: int = 1) -> None:
        """Record one latency; a sample standing for ``weight`` events counts that many."""
        seconds = max(0.0, seconds)
        self._counts[self._bucket(seconds)] += weight
        self.count += weight
        self.total += seconds * weight
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float:
        """The upper edge of the bucket holding the q-th quantile (capped at the exact max)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                edge = 0.0 if index == 0 else _MIN_SECONDS * _GROWTH**index
                return min(edge, self.max)
        return self.max

    def merged(self, other: LatencyHistogram) -> LatencyHistogram:
        """A new histogram holding the samples of both."""
        result = LatencyHistogram()
        result._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        result.count = self.count + other.count
        result.total = self.total + other.total
        result.max = max(self.max, other.max)
        return result

    def copy(self) -> LatencyHistogram:
        return self.merged(LatencyHistogram())

    def summary(self) -> LatencySummary:
        return LatencySummary(
            count=self.count,
            mean=self.total / self.count if self.count else 0.0,
            p50=self.percentile(0.50),
            p90=self.percentile(0.90),
            p99=self.percentile(0.99),
            max=self.max,
        )

    @staticmethod
    def memory_slots() -> int:
        return _BUCKETS


@dataclasses.dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency percentiles in seconds."""

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0

    def describe(self) -> str:
        if not self.count:
            return "no samples"
        return (
            f"p50 {_ms(self.p50)}  p90 {_ms(self.p90)}  p99 {_ms(self.p99)}  "
            f"max {_ms(self.max)}  (n={self.count})"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


_EMPTY: Mapping[str, int] = MappingProxyType({})
_KIND_FIELDS = ("hits", "misses", "coalesced", "fetch_success", "fetch_failure")


@dataclasses.dataclass(frozen=True, slots=True)
class KindMetrics:
    """Counters of one (app_id, kind): gets and upstream requests."""

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    fetch_success: int = 0
    fetch_failure: int = 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenMetrics:
    """A frozen snapshot of the TokenActor's counters.

    Each caller get counts exactly once among ``hits``, ``misses`` (it started a fetch) and
    ``coalesced`` (it joined a fetch in flight). ``stale_served`` counts hits served while the
    key was being refreshed (prewarm in flight or retrying). ``fetch_success`` and
    ``fetch_failure`` count upstream requests, one per attempt.
    """

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    stale_served: int = 0
    fetch_success: int = 0
    fetch_failure: int = 0
    retries: int = 0
    prewarms: int = 0
    invalidations: int = 0
    same_token_refreshes: int = 0
    idle_evictions: int = 0
    ticket_resends: int = 0
    fetches_by_cause: Mapping[str, int] = dataclasses.field(default_factory=lambda: _EMPTY)
    failures_by_error: Mapping[str, int] = dataclasses.field(default_factory=lambda: _EMPTY)
    by_app_kind: Mapping[tuple[str, str], KindMetrics] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    in_flight: int = 0
    queued: int = 0
    mailbox_depth: int = 0
    keys_cached: int = 0
    keys_tracked: int = 0  # keys the TokenActor holds state for, with or without a token
    soonest_expiry_in: float | None = None
    get_latency: LatencySummary = dataclasses.field(default_factory=LatencySummary)
    fetch_latency: LatencySummary = dataclasses.field(default_factory=LatencySummary)

    @property
    def gets(self) -> int:
        return self.hits + self.misses + self.coalesced

    @property
    def hit_rate(self) -> float:
        """Share of gets answered from the cache, 0.0-1.0 (0.0 before any get)."""
        return self.hits / self.gets if self.gets else 0.0

    def report(self) -> str:
        """A human-readable performance report."""
        causes = ", ".join(f"{k} {v}" for k, v in sorted(self.fetches_by_cause.items())) or "none"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.failures_by_error.items())) or "none"
        expiry = "n/a" if self.soonest_expiry_in is None else f"{self.soonest_expiry_in:.0f} s"
        lines = [
            "lark-token-actors performance report",
            f"  gets            {self.gets}  (hits {self.hits}, misses {self.misses}, "
            f"coalesced {self.coalesced}; stale served {self.stale_served})",
            f"  hit rate        {self.hit_rate:.1%}",
            f"  get latency     {self.get_latency.describe()}",
            f"  upstream        {self.fetch_success} ok, {self.fetch_failure} failed, "
            f"{self.retries} retries; by cause: {causes}",
            f"  failures        {errors}",
            f"  fetch latency   {self.fetch_latency.describe()}",
            f"  refreshes       {self.prewarms} prewarms, {self.invalidations} invalidations, "
            f"{self.same_token_refreshes} same-token, {self.idle_evictions} idle evictions, "
            f"{self.ticket_resends} ticket resends",
            f"  now             {self.keys_cached} keys cached, {self.in_flight} fetches in "
            f"flight, {self.queued} queued, {self.mailbox_depth} in mailbox, soonest expiry "
            f"in {expiry}",
        ]
        labels = {group: f"{group[0]}/{group[1]}" for group in self.by_app_kind}
        width = max((len(label) for label in labels.values()), default=0)
        for group, k in sorted(self.by_app_kind.items()):
            lines.append(
                f"  {labels[group]:<{width}}  hits {k.hits}, misses {k.misses}, coalesced "
                f"{k.coalesced}; upstream {k.fetch_success} ok, {k.fetch_failure} failed"
            )
        return "\n".join(lines)


class MetricsRecorder:
    """The mutable side, written only from the TokenActor's thread."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self.stale_served = 0
        self.fetch_success = 0
        self.fetch_failure = 0
        self.retries = 0
        self.prewarms = 0
        self.invalidations = 0
        self.same_token_refreshes = 0
        self.idle_evictions = 0
        self.ticket_resends = 0
        self.per_kind: Counter[tuple[str, str, str]] = Counter()  # (app_id, kind, field)
        self.fetches_by_cause: Counter[str] = Counter()
        self.failures_by_error: Counter[str] = Counter()
        self.get_latency = LatencyHistogram()
        self.fetch_latency = LatencyHistogram()

    def count(self, app_id: str, kind: str, field: str) -> None:
        """One more of ``field`` (a KindMetrics field) for (app_id, kind), and in the totals."""
        setattr(self, field, getattr(self, field) + 1)
        self.per_kind[app_id, kind, field] += 1

    def snapshot(
        self,
        *,
        in_flight: int,
        queued: int,
        mailbox_depth: int,
        keys_cached: int,
        keys_tracked: int,
        soonest_expiry_in: float | None,
        fast_hits: Mapping[tuple[str, str], int],
        fast_stale: int,
        caller_coalesced: Mapping[tuple[str, str], int],
        caller_latency: LatencyHistogram,
    ) -> TokenMetrics:
        """The frozen snapshot: the actor's own counts plus what callers counted themselves
        (fast-read hits, awaits coalesced on their own event loop, their latencies)."""
        per_kind = Counter(self.per_kind)
        for (app_id, kind), n in fast_hits.items():
            per_kind[app_id, kind, "hits"] += n
        for (app_id, kind), n in caller_coalesced.items():
            per_kind[app_id, kind, "coalesced"] += n
        groups = {(app_id, kind) for app_id, kind, _ in per_kind}
        by_app_kind = {
            group: KindMetrics(*(per_kind[(*group, f)] for f in _KIND_FIELDS)) for group in groups
        }
        return TokenMetrics(
            hits=self.hits + sum(fast_hits.values()),
            misses=self.misses,
            coalesced=self.coalesced + sum(caller_coalesced.values()),
            stale_served=self.stale_served + fast_stale,
            fetch_success=self.fetch_success,
            fetch_failure=self.fetch_failure,
            retries=self.retries,
            prewarms=self.prewarms,
            invalidations=self.invalidations,
            same_token_refreshes=self.same_token_refreshes,
            idle_evictions=self.idle_evictions,
            ticket_resends=self.ticket_resends,
            fetches_by_cause=MappingProxyType(dict(self.fetches_by_cause)),
            failures_by_error=MappingProxyType(dict(self.failures_by_error)),
            by_app_kind=MappingProxyType(by_app_kind),
            in_flight=in_flight,
            queued=queued,
            mailbox_depth=mailbox_depth,
            keys_cached=keys_cached,
            keys_tracked=keys_tracked,
            soonest_expiry_in=soonest_expiry_in,
            get_latency=self.get_latency.merged(caller_latency).summary(),
            fetch_latency=self.fetch_latency.summary(),
        )

"""Metrics: one table of counters (:class:`Count`) from which the recorder, the frozen snapshot,
its report and the Prometheus exposition are built; counters owned by the TokenActor (its only
writer, so no locks) and lock-free tallies callers' threads keep; bounded latency histograms."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "KIND_COUNTS",
    "Count",
    "Group",
    "KindMetrics",
    "LatencyHistogram",
    "LatencySummary",
    "MetricsRecorder",
    "Tally",
    "TokenMetrics",
    "shown",
]

_MIN_SECONDS = 1e-6
_GROWTH = 1.08  # bucket width: percentiles are exact to within 8%
_BUCKETS = int(math.log(1e4 / _MIN_SECONDS) / math.log(_GROWTH)) + 2  # 1 µs .. ~3 h


class LatencyHistogram:
    """Log-bucketed histogram: constant memory whatever the traffic, ~8% relative precision."""

    __slots__ = ("_counts", "count", "max", "total")

    def __init__(self) -> None:
        self._counts: list[float] = [0.0] * _BUCKETS  # floats once scaled_to() has run
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    @staticmethod
    def _bucket(seconds: float) -> int:
        if seconds <= _MIN_SECONDS:
            return 0
        return min(_BUCKETS - 1, 1 + int(math.log(seconds / _MIN_SECONDS) / math.log(_GROWTH)))

    def record(self, seconds: float) -> None:
        """Record one latency."""
        seconds = max(0.0, seconds)
        self._counts[self._bucket(seconds)] += 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float:
        """The upper edge of the bucket holding the q-th quantile (capped at the exact max)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0.0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank - 1e-6:  # scaled counts are floats: allow for their rounding
                edge = 0.0 if index == 0 else _MIN_SECONDS * _GROWTH**index
                return min(edge, self.max)
        return self.max

    def scaled_to(self, count: int) -> LatencyHistogram:
        """A copy whose samples stand for ``count`` events in all (a sampled histogram made to
        describe every event it was sampled from); empty when there are no samples."""
        result = LatencyHistogram()
        if not self.count or count <= 0:
            return result
        factor = count / self.count
        result._counts = [n * factor for n in self._counts]
        result.count = count
        result.total = self.total * factor
        result.max = self.max
        return result

    def merged(self, other: LatencyHistogram) -> LatencyHistogram:
        """A new histogram holding the samples of both."""
        result = LatencyHistogram()
        result._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        result.count = self.count + other.count
        result.total = self.total + other.total
        result.max = max(self.max, other.max)
        return result

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


class Group(enum.Enum):
    """A family of counters kept per (app_id, kind): one :class:`KindMetrics` field and one
    labelled Prometheus counter for each member."""

    def __init__(self, family: str, label: str, help_: str) -> None:
        self.family = family  # the Prometheus name, after the namespace
        self.label = label  # the Prometheus label telling its members apart
        self.help = help_

    GETS = "gets", "outcome", "Token gets by outcome"
    UPSTREAM = "upstream_requests", "result", "Upstream token requests (one per attempt) by result"


class Count(enum.Enum):
    """The counters of :class:`TokenMetrics`, one line each: the recorder, the snapshot,
    ``report()`` and the Prometheus collector all derive theirs from this table. A new counter
    is a line here and its typed field in TokenMetrics (and in KindMetrics if grouped); a test
    checks that the table and the fields agree.

    A member's name is its TokenMetrics field. Its columns: what one count means (the
    Prometheus help; for a grouped counter, said of the group's subject), the title of the
    report line it is printed on, how it is printed there, and for a counter kept per
    (app_id, kind) its :class:`Group` and its label value in that group's family. A counter
    outside a group is exposed as ``<namespace>_<name>_total``.
    """

    def __init__(
        self, help_: str, line: str, shown: str, group: Group | None = None, label: str = ""
    ) -> None:
        self.help = help_
        self.line = line
        self.shown = shown  # its place in the report line; {} is the count
        self.group = group
        self.label = label

    # name = help, report line, printed as[, group, label value]
    hits = "answered from the cache", "gets", "hits {}", Group.GETS, "hit"
    misses = "started a fetch", "gets", "misses {}", Group.GETS, "miss"
    coalesced = "joined a fetch in flight", "gets", "coalesced {}", Group.GETS, "coalesced"
    stale_served = "Hits served while their key was being refreshed", "gets", "stale served {}"
    fetch_success = "a token", "upstream", "{} ok", Group.UPSTREAM, "success"
    fetch_failure = "an error or no answer", "upstream", "{} failed", Group.UPSTREAM, "failure"
    retries = "Upstream retries after a transient failure", "upstream", "{} retries"
    prewarms = "Refreshes started before a token expired", "refreshes", "{} prewarms"
    invalidations = "Cached tokens dropped by invalidate()", "refreshes", "{} invalidations"
    same_token_refreshes = "Refreshes that got back the cached token", "refreshes", "{} same-token"
    idle_evictions = "Keys dropped because nobody read them", "refreshes", "{} idle evictions"
    ticket_resends = "app_ticket resends requested from Feishu", "refreshes", "{} ticket resends"

    def read(self, counts: TokenMetrics | KindMetrics) -> int:
        """This counter's value in a snapshot (a KindMetrics has only the grouped ones)."""
        value: int = getattr(counts, self.name)
        return value


KIND_COUNTS = tuple(c for c in Count if c.group is not None)


def shown(counts: TokenMetrics | KindMetrics, line: str) -> str:
    """The counters of one report line, as that line prints them."""
    kind_only = isinstance(counts, KindMetrics)
    return ", ".join(
        c.shown.format(c.read(counts))
        for c in Count
        if c.line == line and (c.group is not None or not kind_only)
    )


class Tally(itertools.count):  # type: ignore[type-arg]
    """An exact count that any thread bumps with ``next(tally)``, lock-free: one C call, the
    cost of a plain ``itertools.count`` (the fast-read hit path counts with it).
    :meth:`value` reads it from any thread without counting: the hit path samples the hits to
    time by the raw count, and a read that moved it would shift which hits are timed."""

    __slots__ = ()

    def value(self) -> int:
        """How many ``next()`` calls so far."""
        # The count's repr, "Tally(17)", is read in one C call, like next() itself.
        return int(repr(self).rpartition("(")[2].rstrip(")"))


_EMPTY: Mapping[str, int] = MappingProxyType({})


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
            f"  gets            {self.gets}  ({shown(self, 'gets')})",
            f"  hit rate        {self.hit_rate:.1%}",
            f"  get latency     {self.get_latency.describe()}",
            f"  upstream        {shown(self, 'upstream')}; by cause: {causes}",
            f"  failures        {errors}",
            f"  fetch latency   {self.fetch_latency.describe()}",
            f"  refreshes       {shown(self, 'refreshes')}",
            f"  now             {self.keys_cached} keys cached, {self.in_flight} fetches in "
            f"flight, {self.queued} queued, {self.mailbox_depth} in mailbox, soonest expiry "
            f"in {expiry}",
        ]
        labels = {group: f"{group[0]}/{group[1]}" for group in self.by_app_kind}
        width = max((len(label) for label in labels.values()), default=0)
        for group, k in sorted(self.by_app_kind.items()):
            lines.append(
                f"  {labels[group]:<{width}}  {shown(k, 'gets')}; upstream {shown(k, 'upstream')}"
            )
        return "\n".join(lines)


class MetricsRecorder:
    """The mutable side, written only from the TokenActor's thread."""

    def __init__(self) -> None:
        self._totals: Counter[Count] = Counter()  # counters outside a group
        self._per_kind: Counter[tuple[str, str, Count]] = Counter()  # grouped counters
        self.fetches_by_cause: Counter[str] = Counter()
        self.failures_by_error: Counter[str] = Counter()
        self.get_latency = LatencyHistogram()
        self.fetch_latency = LatencyHistogram()

    def count(self, app_id: str, kind: str, counter: Count) -> None:
        """One more of a grouped ``counter`` for (app_id, kind); its total is their sum."""
        if counter.group is None:
            raise ValueError(f"{counter.name} is not kept per (app_id, kind): use add()")
        self._per_kind[app_id, kind, counter] += 1

    def add(self, counter: Count, n: int = 1) -> None:
        """``n`` more of a ``counter`` kept only in total."""
        if counter.group is not None:
            raise ValueError(f"{counter.name} is kept per (app_id, kind): use count()")
        self._totals[counter] += n

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
        per_kind = Counter(self._per_kind)
        for (app_id, kind), n in fast_hits.items():
            per_kind[app_id, kind, Count.hits] += n
        for (app_id, kind), n in caller_coalesced.items():
            per_kind[app_id, kind, Count.coalesced] += n
        totals = Counter(self._totals)
        totals[Count.stale_served] += fast_stale
        groups: dict[tuple[str, str], Counter[Count]] = {}
        for (app_id, kind, counter), n in per_kind.items():
            groups.setdefault((app_id, kind), Counter())[counter] += n
            totals[counter] += n
        by_app_kind = {
            group: KindMetrics(**{c.name: counts[c] for c in KIND_COUNTS})
            for group, counts in groups.items()
        }
        return TokenMetrics(
            **{c.name: totals[c] for c in Count},
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

"""Prometheus exposition of a TokenSystem's metrics (the ``prometheus`` extra).

Register the collector with your registry; every scrape takes one ``system.metrics()`` snapshot::

    from prometheus_client import REGISTRY
    from actors.prometheus import TokenMetricsCollector

    REGISTRY.register(TokenMetricsCollector(system))

or serve a dedicated registry on its own port with :func:`serve_metrics`. Labels are ``app_id``
and ``kind`` (plus ``outcome``, ``result``, ``cause`` and ``error`` where named): never a
tenant key, a token or a secret. Latencies are in seconds. The TokenActor keeps percentiles, not
buckets, so latencies are exposed as summaries with ``quantile`` labels (computed over the
system's whole life) plus a ``..._max_seconds`` gauge.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from wsgiref.simple_server import WSGIServer

import pykka
from loguru import logger

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
        SummaryMetricFamily,
    )
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    msg = 'actors.prometheus needs prometheus-client: pip install "lark-token-actors[prometheus]"'
    raise ImportError(msg) from exc

from actors._errors import TokenError
from actors._metrics import KIND_COUNTS, Count, Group, LatencySummary, TokenMetrics
from actors._system import TokenSystem

__all__ = ["TokenMetricsCollector", "serve_metrics"]

_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))


class TokenMetricsCollector:
    """A ``prometheus_client`` custom collector exposing ``system.metrics()``.

    Args:
        system: The running system to describe.
        namespace: Prefix of every metric name.
        timeout: Seconds to wait for the TokenActor's snapshot during a scrape. If the system is
            stopped or does not answer in time, the scrape still succeeds with only
            ``<namespace>_up 0``, so one stopped system never breaks the rest of a registry.
    """

    def __init__(
        self, system: TokenSystem, *, namespace: str = "lark_token", timeout: float = 5.0
    ) -> None:
        if not namespace or not namespace.replace("_", "a").isalnum():
            msg = f"namespace must be letters, digits and underscores, got {namespace!r}"
            raise ValueError(msg)
        self._system = system
        self._ns = namespace
        self._timeout = timeout

    def describe(self) -> Iterator[Metric]:
        # Registration asks for the names; answering from an empty snapshot keeps it from
        # sending a message to the TokenActor (which may not even be running yet in tests).
        return self._families(TokenMetrics())

    def collect(self) -> Iterator[Metric]:
        try:
            snapshot = self._system.metrics(timeout=self._timeout)
        except (TokenError, pykka.Timeout) as exc:
            # SystemStoppedError is a TokenError; pykka.Timeout: the actor is stuck or swamped.
            logger.bind(error=type(exc).__name__).warning("metrics scrape: no snapshot: {}", exc)
            yield self._gauge("up", "1 if the TokenSystem answered this scrape, else 0", 0)
            return
        yield from self._families(snapshot)

    # --- building the families -------------------------------------------------------------------

    def _families(self, m: TokenMetrics) -> Iterator[Metric]:
        ns = self._ns
        yield self._gauge("up", "1 if the TokenSystem answered this scrape, else 0", 1)

        yield from self._counts(m)
        yield self._labelled_counter(
            "fetches_by_cause", "Refreshes started, by cause", "cause", m.fetches_by_cause
        )
        yield self._labelled_counter(
            "failures", "Failed upstream requests, by error class", "error", m.failures_by_error
        )

        yield self._gauge("in_flight_fetches", "Upstream fetches running now", m.in_flight)
        yield self._gauge("queued_fetches", "Fetches waiting for a free slot", m.queued)
        yield self._gauge(
            "mailbox_depth", "Messages waiting in the TokenActor's mailbox", m.mailbox_depth
        )
        yield self._gauge("keys_cached", "Keys holding a token", m.keys_cached)
        soonest = GaugeMetricFamily(
            f"{ns}_soonest_expiry_seconds",
            "Seconds until the soonest cached token expires (absent when none is cached)",
        )
        if m.soonest_expiry_in is not None:
            soonest.add_metric([], m.soonest_expiry_in)
        yield soonest
        yield self._gauge("hit_ratio", "Share of gets answered from the cache (0-1)", m.hit_rate)

        yield from self._latency(
            "get_latency",
            "Get latency from request to reply",
            m.get_latency,
        )
        yield from self._latency(
            "fetch_latency", "Latency of one upstream token request", m.fetch_latency
        )

    def _counts(self, m: TokenMetrics) -> Iterator[Metric]:
        """The :class:`Count` table: a labelled family per group, a counter for each other."""
        for group in Group:
            members = [c for c in KIND_COUNTS if c.group is group]
            doc = f"{group.help}: " + ", ".join(f"{c.label} ({c.help})" for c in members)
            family = CounterMetricFamily(
                f"{self._ns}_{group.family}", doc, labels=["app_id", "kind", group.label]
            )
            for (app_id, kind), k in sorted(m.by_app_kind.items()):
                for c in members:
                    # TokenKind is a StrEnum: str() is its value ("tenant", "app").
                    family.add_metric([app_id, str(kind), c.label], c.read(k))
            yield family
        for c in Count:
            if c.group is None:
                yield CounterMetricFamily(f"{self._ns}_{c.name}", c.help, value=c.read(m))

    def _labelled_counter(
        self, name: str, doc: str, label: str, values: Mapping[str, int]
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(f"{self._ns}_{name}", doc, labels=[label])
        for key, value in sorted(values.items()):
            family.add_metric([key], value)
        return family

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{self._ns}_{name}", doc, value=value)

    def _latency(self, name: str, doc: str, s: LatencySummary) -> Iterator[Metric]:
        base = f"{self._ns}_{name}_seconds"
        summary = SummaryMetricFamily(base, f"{doc} (quantiles over the system's life)")
        for quantile, field in _QUANTILES:
            summary.add_sample(base, {"quantile": quantile}, getattr(s, field))
        summary.add_metric([], s.count, s.mean * s.count)
        yield summary
        yield self._gauge(f"{name}_max_seconds", f"{doc}: the slowest so far", s.max)


def serve_metrics(
    system: TokenSystem, *, port: int, addr: str = "127.0.0.1"
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``system``'s metrics at ``http://addr:port/metrics`` from a daemon thread.

    The collector goes into a dedicated ``CollectorRegistry`` (not the global one), so this
    neither exposes nor clashes with other metrics of the process. ``port=0`` picks a free port
    (``server.server_port``). Stop with ``server.shutdown(); server.server_close();
    thread.join()``.

    Raises:
        OSError: The address cannot be bound (port in use, unknown address).
    """
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(system))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    logger.bind(addr=addr, port=server.server_port).info("serving Prometheus metrics")
    return server, thread

"""The Prometheus collector: parseable exposition, values equal to metrics(), no secrets."""

from __future__ import annotations

import importlib
import sys
from typing import cast

import pytest
import requests
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import actors
from actors._metrics import Count
from actors.prometheus import TokenMetricsCollector, serve_metrics
from actors.testing import FakeFeishu, Reply
from tests.conftest import MARKET_ID, MARKET_SECRET, SECRET, SystemFactory, drive
from tests.test_metrics import GROUP, recorded

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family name -> type, and every sample keyed by (name, labels), via prometheus' parser."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def exposition(system: actors.TokenSystem, *, namespace: str = "lark_token") -> str:
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(system, namespace=namespace))
    return generate_latest(registry).decode()


def test_exposition_parses_and_matches_metrics_after_a_failure_a_retry_a_miss_and_two_hits(
    make_system: SystemFactory,
    app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(app)
    server.script("tenant", Reply.http(502))
    drive(system, clock, system.proxy.get_token())
    system.proxy.get_token().get(timeout=5)
    system.proxy.get_token().get(timeout=5)
    system.settle()

    types, samples = parse(exposition(system))
    m = system.metrics()

    tenant = {"app_id": app.app_id, "kind": "tenant"}
    assert value(samples, "lark_token_gets_total", outcome="hit", **tenant) == m.hits == 2
    assert value(samples, "lark_token_gets_total", outcome="miss", **tenant) == m.misses == 1
    assert value(samples, "lark_token_gets_total", outcome="coalesced", **tenant) == 0
    upstream = "lark_token_upstream_requests_total"
    assert value(samples, upstream, result="success", **tenant) == m.fetch_success == 1
    assert value(samples, upstream, result="failure", **tenant) == m.fetch_failure == 1
    assert value(samples, "lark_token_retries_total") == m.retries == 1
    assert value(samples, "lark_token_failures_total", error="UpstreamError") == 1
    assert value(samples, "lark_token_fetches_by_cause_total", cause="miss") == 1
    for name, expected in [
        ("lark_token_stale_served_total", m.stale_served),
        ("lark_token_prewarms_total", m.prewarms),
        ("lark_token_invalidations_total", m.invalidations),
        ("lark_token_same_token_refreshes_total", m.same_token_refreshes),
        ("lark_token_in_flight_fetches", m.in_flight),
        ("lark_token_queued_fetches", m.queued),
        ("lark_token_mailbox_depth", m.mailbox_depth),
        ("lark_token_keys_cached", m.keys_cached),
        ("lark_token_soonest_expiry_seconds", m.soonest_expiry_in),
        ("lark_token_up", 1),
    ]:
        assert value(samples, name) == expected, name
    assert value(samples, "lark_token_hit_ratio") == pytest.approx(2 / 3)
    # One get timed by the actor; of the two fast hits the first is sampled, standing for both.
    count = m.get_latency.count
    assert value(samples, "lark_token_get_latency_seconds_count") == count == 3
    assert value(samples, "lark_token_get_latency_seconds", quantile="0.99") == m.get_latency.p99
    assert value(samples, "lark_token_fetch_latency_seconds_count") == m.fetch_latency.count == 2
    assert value(samples, "lark_token_fetch_latency_max_seconds") == m.fetch_latency.max

    assert types["lark_token_gets"] == "counter"
    assert types["lark_token_get_latency_seconds"] == "summary"
    assert types["lark_token_keys_cached"] == "gauge"


def test_the_exposition_never_contains_a_token_a_tenant_key_or_a_secret(
    make_system: SystemFactory,
    app: actors.AppConfig,
    market_app: actors.AppConfig,
    server: FakeFeishu,
) -> None:
    system = make_system([app, market_app])
    system.proxy.set_app_ticket(server.issue_ticket(MARKET_ID), app_id=MARKET_ID).get(timeout=5)
    tenant_key = "tenant-key-2ed263bf32cf1651"
    tokens = [
        system.proxy.get_token(app_id=app.app_id).get(timeout=5),
        system.proxy.get_token(actors.TokenKind.APP, app_id=app.app_id).get(timeout=5),
        system.proxy.get_token(tenant_key=tenant_key, app_id=MARKET_ID).get(timeout=5),
    ]
    text = exposition(system)
    assert MARKET_ID in text  # the scrape did see the marketplace app
    for secret in [*tokens, tenant_key, SECRET, MARKET_SECRET]:
        assert secret not in text
    _, samples = parse(text)
    labels = {name for (_, pairs) in samples for name, _ in pairs}
    assert labels <= {"app_id", "kind", "outcome", "result", "cause", "error", "quantile"}


def test_a_stopped_system_scrapes_as_up_0_instead_of_failing_the_registry(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    system.stop()
    _, samples = parse(exposition(system))
    assert samples == {("lark_token_up", frozenset()): 0}


def test_the_namespace_prefixes_every_name_and_two_collectors_with_one_namespace_clash(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    _, samples = parse(exposition(system, namespace="feishu"))
    assert samples and all(name.startswith("feishu_") for name, _ in samples)
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(system))
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(TokenMetricsCollector(system))
    with pytest.raises(ValueError, match="namespace"):
        TokenMetricsCollector(system, namespace="not a name")


def test_serve_metrics_serves_the_exposition_over_http_from_its_own_registry(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    system.proxy.get_token().get(timeout=5)
    server, thread = serve_metrics(system, port=0)
    try:
        response = requests.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert response.status_code == 200
    _, samples = parse(response.text)
    tenant = {"app_id": app.app_id, "kind": "tenant"}
    assert value(samples, "lark_token_gets_total", outcome="miss", **tenant) == 1
    assert not thread.is_alive()
    assert REGISTRY.get_sample_value("lark_token_up") is None  # the global one is untouched


def test_importing_without_prometheus_client_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "actors.prometheus")
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r'pip install "lark-token-actors\[prometheus\]"'):
        importlib.import_module("actors.prometheus")


class Snapshotted:
    """Stands in for a TokenSystem whose metrics() answers one given snapshot."""

    def __init__(self, snapshot: actors.TokenMetrics) -> None:
        self._snapshot = snapshot

    def metrics(self, *, timeout: float | None = None) -> actors.TokenMetrics:
        return self._snapshot


@pytest.mark.parametrize("counter", list(Count), ids=lambda c: c.name)
def test_every_counter_in_the_table_is_exposed_with_its_value(counter: Count) -> None:
    n = 1000 + list(Count).index(counter)
    registry = CollectorRegistry()
    registry.register(
        TokenMetricsCollector(cast(actors.TokenSystem, Snapshotted(recorded(counter, n))))
    )
    types, samples = parse(generate_latest(registry).decode())
    counted = {key: v for key, v in samples.items() if key[0].endswith("_total") and v}
    if counter.group is None:
        assert types[f"lark_token_{counter.name}"] == "counter"
        assert counted == {(f"lark_token_{counter.name}_total", frozenset()): n}
    else:
        family = f"lark_token_{counter.group.family}"
        labels = {"app_id": GROUP[0], "kind": GROUP[1], counter.group.label: counter.label}
        assert types[family] == "counter"
        assert counted == {(f"{family}_total", frozenset(labels.items())): n}

"""Counters move exactly as the traffic that drove them; histograms stay bounded."""

from __future__ import annotations

import random

import pytest
from loguru import logger

import actors
from actors._cache import SAMPLE_EVERY
from actors._metrics import LatencyHistogram
from actors.testing import FakeFeishu, Reply
from tests.conftest import SystemFactory


def test_five_coalesced_waiters_on_one_fetch_are_one_miss_and_four_coalesced(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app)
    gate = server.hold("tenant")
    futures = [system.proxy.get_token() for _ in range(5)]
    assert gate.wait_for_waiting(1)
    gate.release()
    for future in futures:
        future.get(timeout=5)
    system.proxy.get_token().get(timeout=5)
    m = system.metrics()
    assert (m.misses, m.coalesced, m.hits, m.gets) == (1, 4, 1, 6)
    assert (m.fetch_success, m.fetch_failure, m.retries) == (1, 0, 0)
    assert m.fetches_by_cause == {"miss": 1}
    assert m.hit_rate == pytest.approx(1 / 6)
    # Five gets timed by the actor, one fast hit sampled (it stands for SAMPLE_EVERY hits).
    assert m.get_latency.count == 5 + SAMPLE_EVERY
    assert m.fetch_latency.count == 1
    assert m.keys_cached == 1
    assert m.in_flight == 0


def test_failures_count_per_attempt_and_by_error_class(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = make_system(app, max_attempts=3)
    server.script("tenant", Reply.http(502), Reply.rate_limited(reset=1))
    future = system.proxy.get_token()
    for _ in range(10):
        system.settle()
        clock.advance(2)
    future.get(timeout=5)
    m = system.metrics()
    assert (m.fetch_failure, m.fetch_success, m.retries) == (2, 1, 2)
    assert m.failures_by_error == {"UpstreamError": 1, "RateLimitedError": 1}
    assert m.by_app_kind["cli_test", "tenant"].fetch_failure == 2


def test_metrics_are_kept_per_app_and_kind(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    system.proxy.get_token().get(timeout=5)
    system.proxy.get_token(actors.TokenKind.APP).get(timeout=5)
    system.proxy.get_token(actors.TokenKind.APP).get(timeout=5)
    by = system.metrics().by_app_kind
    assert by["cli_test", "tenant"] == actors.KindMetrics(misses=1, fetch_success=1)
    assert by["cli_test", "app"] == actors.KindMetrics(hits=1, misses=1, fetch_success=1)
    report = system.performance_report()
    assert "cli_test/app" in report
    assert "hit rate" in report


def test_histogram_memory_is_constant_whatever_the_traffic() -> None:
    histogram = LatencyHistogram()
    slots = len(histogram._counts)
    rng = random.Random(5)
    samples = [rng.lognormvariate(-6, 2) for _ in range(100_000)]
    for sample in samples:
        histogram.record(sample)
    assert len(histogram._counts) == slots == LatencyHistogram.memory_slots()
    samples.sort()
    for q in (0.5, 0.9, 0.99):
        exact = samples[int(q * len(samples)) - 1]
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.09)
    assert histogram.summary().max == max(samples)


def test_the_report_is_logged_periodically_on_the_clock(
    make_system: SystemFactory, app: actors.AppConfig, clock: actors.ManualClock
) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{message}")
    logger.enable("actors")
    try:
        system = make_system(app, report_interval=60.0)
        system.proxy.get_token().get(timeout=5)
        system.settle()
        assert not [line for line in lines if "performance report" in line]
        for _ in range(3):
            clock.advance(60)
            system.settle()
    finally:
        logger.disable("actors")
        logger.remove(sink)
    assert len([line for line in lines if "performance report" in line]) == 3

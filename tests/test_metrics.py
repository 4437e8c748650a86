"""Counters move exactly as the traffic that drove them; histograms stay bounded."""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest
from loguru import logger

import actors
from actors._metrics import KIND_COUNTS, Count, LatencyHistogram, MetricsRecorder, Tally
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
    # Five gets timed by the actor, one fast hit sampled: the latency describes all six gets.
    assert m.get_latency.count == 6 == m.gets
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


GROUP = ("cli_counted", "tenant")
GAUGES = {"in_flight", "queued", "mailbox_depth", "keys_cached", "keys_tracked"}


def recorded(counter: Count, n: int) -> actors.TokenMetrics:
    """A snapshot of a recorder that counted ``n`` of ``counter`` (in GROUP if it is grouped)
    and nothing else."""
    recorder = MetricsRecorder()
    for _ in range(n):
        if counter.group is None:
            recorder.add(counter)
        else:
            recorder.count(*GROUP, counter)
    return recorder.snapshot(
        in_flight=0,
        queued=0,
        mailbox_depth=0,
        keys_cached=0,
        keys_tracked=0,
        soonest_expiry_in=None,
        fast_hits={},
        fast_stale=0,
        caller_coalesced={},
        caller_latency=LatencyHistogram(),
    )


def test_the_counter_table_names_exactly_the_integer_fields_of_the_snapshots() -> None:
    fields = {f.name for f in dataclasses.fields(actors.TokenMetrics) if f.type == "int"}
    assert fields - GAUGES == {c.name for c in Count}
    kind_fields = {f.name for f in dataclasses.fields(actors.KindMetrics)}
    assert kind_fields == {c.name for c in KIND_COUNTS}


@pytest.mark.parametrize("counter", list(Count), ids=lambda c: c.name)
def test_every_counter_in_the_table_reaches_its_snapshot_field_and_the_report(
    counter: Count,
) -> None:
    n = 1000 + list(Count).index(counter)  # unlike any other number in the report
    m = recorded(counter, n)
    assert {c.name: getattr(m, c.name) for c in Count} == {
        c.name: n if c is counter else 0 for c in Count
    }
    lines = {line.split()[0]: line for line in m.report().splitlines()[1:]}  # by title
    assert counter.shown.format(n) in lines[counter.line]
    if counter.group is None:
        assert m.by_app_kind == {}
    else:
        assert getattr(m.by_app_kind[GROUP], counter.name) == n
        assert counter.shown.format(n) in lines["cli_counted/tenant"]


def test_a_grouped_counter_is_refused_in_total_only_and_a_total_only_one_per_group() -> None:
    recorder = MetricsRecorder()
    with pytest.raises(ValueError, match="use count"):
        recorder.add(Count.hits)
    with pytest.raises(ValueError, match="use add"):
        recorder.count(*GROUP, Count.retries)


def test_a_tally_read_while_threads_count_ends_exact_and_never_goes_back() -> None:
    tally = Tally()
    start = threading.Barrier(5)

    def bump() -> None:
        start.wait()
        for _ in range(20_000):
            next(tally)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    reads = [tally.value() for _ in range(1_000)]
    for thread in threads:
        thread.join()
    assert reads == sorted(reads)
    assert tally.value() == tally.value() == 80_000

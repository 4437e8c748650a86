"""The simulation harness: deterministic, and its numbers follow from the traffic."""

from __future__ import annotations

import dataclasses

import pytest

import actors
from actors.sim import SimulationConfig, SimulationReport, run_simulation

SMALL = SimulationConfig(tenants=30, hours=6, gets_per_step=20, arrival_window=3600)


def test_a_quiet_day_serves_every_later_get_from_the_cache() -> None:
    report = run_simulation(SMALL)
    assert report.cold_starts == 30
    assert report.caller_waits == 0
    assert report.caller_errors == 0
    assert report.hit_rate == 1.0
    assert report.peak_concurrent_per_key == 1
    # Each tenant refreshes about once per (lifetime - prewarm lead) after its first fetch.
    assert 30 * 1 <= report.upstream_calls <= 30 * 4
    assert report.worst_remaining is not None
    assert report.worst_remaining >= SMALL.policy.safety_margin
    assert "30 tenants x 6 virtual hours" in report.render()


def test_the_same_seed_gives_the_same_run() -> None:
    def outcome(report: SimulationReport) -> SimulationReport:
        # Wall time and how many worker threads overlapped depend on the real machine.
        return dataclasses.replace(
            report, wall_seconds=0.0, peak_concurrent_fetches=0, metrics=actors.TokenMetrics()
        )

    assert outcome(run_simulation(SMALL)) == outcome(run_simulation(SMALL))


def test_an_outage_longer_than_the_margin_makes_callers_wait_and_fail() -> None:
    config = dataclasses.replace(
        SMALL,
        outages=((2.0, 4.0),),
        policy=actors.RefreshPolicy(seed=1, max_attempts=3, retry_cap=60.0),
    )
    report = run_simulation(config)
    assert report.caller_errors > 0
    assert report.caller_waits > 0
    assert report.metrics.fetch_failure > 0
    assert report.metrics.stale_served > 0  # the valid token was served while refreshes failed
    assert report.worst_remaining is not None
    assert report.worst_remaining >= config.policy.safety_margin  # never past the margin


def test_the_concurrency_cap_bounds_upstream_requests() -> None:
    config = dataclasses.replace(
        SMALL,
        tenants=60,
        arrival_window=60,
        policy=actors.RefreshPolicy(seed=1, jitter=0.0, max_concurrent_fetches=2),
    )
    report = run_simulation(config)
    assert report.peak_concurrent_fetches <= 2


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="tenants"):
        SimulationConfig(tenants=0)
    with pytest.raises(ValueError, match="failure_rate"):
        SimulationConfig(failure_rate=2.0)
    with pytest.raises(ValueError, match="token_lifetime"):
        SimulationConfig(token_lifetime=60.0)
    with pytest.raises(ValueError, match="transport"):
        SimulationConfig(transport="carrier-pigeon")

"""The simulation harness: deterministic, and its numbers follow from the traffic."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import pytest

import actors
from actors.cli._main import main
from actors.sim import SimulationConfig, SimulationReport, run_simulation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SMALL = SimulationConfig(tenants=30, hours=6, gets_per_step=20, arrival_window=3600)


def test_a_quiet_day_serves_every_later_get_from_the_cache() -> None:
    report = run_simulation(SMALL)
    assert report.cold_starts == 30
    assert report.caller_waits == 0
    assert report.caller_errors == 0
    assert report.later_waits == 0.0
    assert report.hit_rate == (report.gets - 30) / report.gets  # the first gets are the misses
    assert report.peak_concurrent_per_key == 1
    # Each tenant refreshes about once per (lifetime - prewarm lead) after its first fetch.
    assert 30 * 1 <= report.upstream_calls <= 30 * 4
    assert report.worst_remaining is not None
    assert report.worst_remaining >= SMALL.policy.safety_margin
    assert report.violations == ()
    assert "30 tenants x 6 virtual hours" in report.render()
    assert "invariants           hold" in report.render()


def test_simulate_prints_one_hit_rate_the_performance_reports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--tenants", "10", "--hours", "1", "--gets-per-step", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("hit rate") == 1
    assert "later gets that waited  0  (0.00% of the " in out


def test_simulate_reports_get_latency_over_exactly_the_gets_it_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--tenants", "10", "--hours", "1"]) == 0
    out = capsys.readouterr().out
    gets = re.search(r"^\s*gets\s+(\d+)", out, re.M)
    latency = re.search(r"^\s*get latency .*\(n=(\d+)\)", out, re.M)
    assert gets is not None and latency is not None, out
    assert int(latency.group(1)) == int(gets.group(1))


def test_the_same_seed_gives_the_same_run() -> None:
    def outcome(report: SimulationReport) -> SimulationReport:
        # Wall time and how many worker threads overlapped depend on the real machine. So does
        # the order in which fetches finishing in one step reach the actor, and with it which
        # key draws which prewarm jitter: a served token's validity can move by a step or so,
        # which the hourly medians show (the least validity does not move).
        hours = tuple(
            dataclasses.replace(hour, peak_in_flight=0, mean_in_flight=0.0, median_validity=0.0)
            for hour in report.hours
        )
        return dataclasses.replace(
            report,
            wall_seconds=0.0,
            peak_concurrent_fetches=0,
            hours=hours,
            metrics=actors.TokenMetrics(),
        )

    first, second = run_simulation(SMALL), run_simulation(SMALL)
    assert outcome(first) == outcome(second)
    for one, other in zip(first.hours, second.hours, strict=True):
        assert one.median_validity is not None and other.median_validity is not None
        assert abs(one.median_validity - other.median_validity) <= 2 * SMALL.step


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
    assert report.violations == ()


def test_gets_still_waiting_when_the_last_step_ends_are_answered_before_the_report() -> None:
    # The outage lasts to the end: the last steps' gets wait for retries past the last step.
    config = dataclasses.replace(SMALL, hours=4, outages=((3.5, 4.0),))
    report = run_simulation(config)
    assert report.caller_errors > 0
    assert report.still_waiting == 0
    assert report.violations == ()
    assert sum(hour.errors for hour in report.hours) == report.caller_errors


def test_a_broken_invariant_is_named_in_the_report_and_fails_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = run_simulation(dataclasses.replace(SMALL, hours=1))
    broken = dataclasses.replace(good, still_waiting=2, worst_remaining=12.5)
    assert broken.violations == ("2 gets never answered", "a token served with 12.5 s left")
    assert "invariants           BROKEN: 2 gets never answered; a token" in broken.render()

    monkeypatch.setattr("actors.sim.run_simulation", lambda config, progress=None: broken)
    assert main(["simulate", "--tenants", "10", "--hours", "1"]) == 1
    captured = capsys.readouterr()
    assert "BROKEN" in captured.out  # the report is printed first
    assert captured.err == (
        "lark-token-actors: error: simulation invariants broken: 2 gets never answered; "
        "a token served with 12.5 s left\n"
    )


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
    with pytest.raises(ValueError, match="wait_resolution"):
        SimulationConfig(wait_resolution=-1.0)


# Waits: virtual seconds, not whole steps


def test_a_get_waiting_for_retries_waits_their_backoff_not_whole_steps() -> None:
    # 30% of token requests fail: some gets wait for one or more retries (backoff 0.5 s and
    # up). The harness moves the clock from timer to timer while they wait, so neither its
    # own wait figures nor the system's get latency (same virtual clock) are whole steps.
    config = dataclasses.replace(SMALL, failure_rate=0.3)
    report = run_simulation(config)
    assert report.late_answers > 0
    assert 0 < report.wait_max < config.step
    assert report.metrics.get_latency.max < config.step
    assert report.wait_p99 <= report.wait_max
    text = report.render()
    assert "virtual seconds from a get to its answer" in text
    assert "not rounded up to steps" in text
    assert f"max {report.wait_max:.1f} s" in text


def test_a_quiet_day_has_no_waits() -> None:
    report = run_simulation(SMALL)
    assert (report.late_answers, report.wait_max, report.wait_p99) == (0, 0.0, 0.0)


# Hourly series: bounded by hours, never by steps or gets


def test_the_hourly_series_has_one_entry_per_hour_whatever_the_steps_and_gets() -> None:
    coarse = dataclasses.replace(SMALL, hours=2.5)
    fine = dataclasses.replace(coarse, step=10.0, gets_per_step=40)  # 6x the steps, 12x gets
    for config in (coarse, fine):
        report = run_simulation(config)
        assert len(report.hours) == len(report.calls_per_hour) == math.ceil(config.hours)
        assert sum(hour.gets for hour in report.hours) == report.gets
        assert sum(report.calls_per_hour) == report.upstream_calls
        assert sum(hour.errors for hour in report.hours) == report.caller_errors
        for hour in report.hours:
            assert hour.busiest_step <= hour.upstream_calls
            assert hour.mean_in_flight <= hour.peak_in_flight <= report.peak_concurrent_fetches
            if hour.min_validity is not None:
                assert hour.median_validity is not None
                assert config.policy.safety_margin <= hour.min_validity
                assert hour.min_validity <= hour.median_validity + 1  # median: whole seconds
        served = [h.min_validity for h in report.hours if h.min_validity is not None]
        assert report.worst_remaining == min(served)


# Plots


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "day.png"
    run_simulation(SMALL).plot(path)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_without_matplotlib_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report = run_simulation(dataclasses.replace(SMALL, hours=1))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(ImportError, match=r'pip install "lark-token-actors\[plot\]"'):
        report.plot(tmp_path / "day.png")
    assert not (tmp_path / "day.png").exists()


def test_simulate_plot_writes_the_png_named_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "day.png"
    assert main(["simulate", "--tenants", "10", "--hours", "2", "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    assert "simulated 10 tenants x 2 virtual hours" in out
    assert f"plot written to {path}" in out
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_simulate_plot_without_matplotlib_is_a_one_line_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "day.png"
    assert main(["simulate", "--tenants", "10", "--hours", "1", "--plot", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before simulating anything
    assert captured.err.startswith("lark-token-actors: error: --plot: ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert 'pip install "lark-token-actors[plot]"' in captured.err
    assert not path.exists()


def test_simulate_plot_into_a_missing_directory_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere" / "day.png"
    assert main(["simulate", "--tenants", "10", "--hours", "1", "--plot", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no such directory" in captured.err and captured.err.count("\n") == 1


def test_simulate_help_lists_the_plot_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--plot PNG" in out and '"plot" extra' in out


# The in-process session the simulation reaches the fake server through


def test_the_in_process_session_answers_plain_and_other_posts_alike() -> None:
    from actors.testing import FakeFeishu
    from actors.testing._transports import InProcessSession

    with FakeFeishu() as server:
        server.add_app("cli_x", "secret-x")
        session = InProcessSession(server)
        url = server.base_url + "/open-apis/auth/v3/tenant_access_token/internal"
        body = {"app_id": "cli_x", "app_secret": "secret-x"}
        fast = session.post(url, json=body, headers={"X-Test": "1"}, timeout=1, stream=True)
        assert json.loads(fast.raw.read1(4096))["code"] == 0  # a stream, as from a socket
        slow = session.post(url, data=b'{"app_id": "cli_x", "app_secret": "secret-x"}')
        assert slow.status_code == 200 and slow.json()["code"] == 0
        wrong = session.post(url, json={"app_id": "cli_x", "app_secret": "nope"})
        assert wrong.json()["code"] != 0
        assert server.count("tenant") == 3

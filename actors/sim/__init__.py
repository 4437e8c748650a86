"""Simulation harness: many tenants, a virtual day of traffic, deterministic and fast.

A marketplace app with ``tenants`` tenant keys runs on a :class:`~actors.ManualClock` against the
embedded fake Feishu (whose token lifetimes follow the same clock). Each step advances virtual
time, lets the system settle (prewarms and retries fire, fetches complete), then sends a batch
of caller gets to random tenants. While a get waits for its answer (a retry's backoff, an
app_ticket wait), the clock moves from timer to timer instead of a whole step at once, so the
virtual time a caller waits is the time it would really wait, not a multiple of the step.

The report says what an operator would ask: upstream calls per hour, peak concurrent fetches,
how many callers waited for the network and how long, hit rate, the least validity any served
token had left, and whether the invariants held (:attr:`SimulationReport.violations`); per
virtual hour too (:class:`HourStats`, which :meth:`SimulationReport.plot` draws). Memory stays
bounded: per-hour aggregates, never a record per get or per upstream call.

    from actors.sim import SimulationConfig, run_simulation
    report = run_simulation(SimulationConfig(tenants=1000, hours=24))
    print(report.render())
    report.plot("day.png")  # needs the plot extra (matplotlib)
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pykka
import requests

from actors._clock import ManualClock
from actors._config import AppConfig, AppType, RefreshPolicy
from actors._errors import TokenError
from actors._metrics import LatencyHistogram, TokenMetrics
from actors._system import TokenSystem
from actors.sim._plot import HourStats, HourTotals, plot_hours

if TYPE_CHECKING:
    from actors.testing import FakeFeishu

__all__ = ["HourStats", "SimulationConfig", "SimulationReport", "parse_outage", "run_simulation"]


_APP_ID = "cli_simulated"
_SECRET = "simulated-secret"
_HOUR = 3600.0
_SETTLE_TIMEOUT = 120.0  # real seconds


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """What to simulate. Times are virtual seconds unless named otherwise."""

    tenants: int = 1000
    hours: float = 24.0
    step: float = 60.0
    gets_per_step: int = 100
    token_lifetime: float = 7200.0
    arrival_window: float = 7200.0  # each tenant's first get comes at a random time in this
    latency: float = 0.0  # real seconds the fake server waits per request
    failure_rate: float = 0.0  # share of token requests answered with HTTP 503
    outages: tuple[tuple[float, float], ...] = ()  # (start_hour, end_hour): every request fails
    policy: RefreshPolicy = dataclasses.field(default_factory=lambda: RefreshPolicy(seed=1))
    seed: int = 1
    # While a get waits for its answer, the clock moves to the next timer, but at least this
    # far at a time (0: exactly timer by timer): the resolution of the waits reported.
    wait_resolution: float = 1.0
    # "in-process": requests reach the fake server through an in-process session (the same
    # request handling, no socket); "http": over loopback HTTP, several times slower.
    transport: str = "in-process"

    def __post_init__(self) -> None:
        if self.tenants < 1 or self.gets_per_step < 0:
            msg = "SimulationConfig: tenants must be >= 1 and gets_per_step >= 0"
            raise ValueError(msg)
        if self.transport not in ("in-process", "http"):
            msg = (
                f"SimulationConfig.transport must be 'in-process' or 'http', got {self.transport!r}"
            )
            raise ValueError(msg)
        if not 0.0 <= self.failure_rate <= 1.0:
            msg = f"SimulationConfig.failure_rate must be in [0, 1], got {self.failure_rate!r}"
            raise ValueError(msg)
        if self.token_lifetime <= self.policy.prewarm_lead:
            msg = "SimulationConfig.token_lifetime must be longer than the policy's prewarm_lead"
            raise ValueError(msg)
        if self.hours <= 0 or self.step <= 0:
            msg = "SimulationConfig: hours and step must be > 0"
            raise ValueError(msg)
        if not 0 <= self.wait_resolution < math.inf:
            msg = f"SimulationConfig.wait_resolution must be >= 0, got {self.wait_resolution!r}"
            raise ValueError(msg)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimulationReport:
    """The outcome of one run."""

    config: SimulationConfig
    wall_seconds: float
    gets: int
    cold_starts: int  # each tenant's first get, which must wait for its first fetch
    caller_waits: int  # later gets that had to wait for an upstream fetch
    caller_errors: int  # gets that ended in an error
    still_waiting: int  # gets never answered, even an hour of virtual time after the last step
    upstream_calls: int
    peak_concurrent_fetches: int
    peak_concurrent_per_key: int
    worst_remaining: float | None  # least validity (s) left on any token served to a caller
    # Virtual seconds from a get to its answer, for the gets answered later than they were sent
    # (a get the system answers without virtual time passing waits 0 s: an upstream call takes
    # no virtual time here).
    late_answers: int
    wait_p99: float  # over every answered get, waits of 0 s included
    wait_max: float
    hours: tuple[HourStats, ...]
    metrics: TokenMetrics

    @property
    def calls_per_hour(self) -> tuple[int, ...]:
        return tuple(hour.upstream_calls for hour in self.hours)

    @property
    def hit_rate(self) -> float:
        """Share of gets answered from the cache, as the performance report counts it (a
        tenant's first get is a miss under any policy: see :attr:`later_waits`)."""
        return self.metrics.hit_rate

    @property
    def later_waits(self) -> float:
        """Share of the gets after a tenant's first that had to wait for an upstream fetch."""
        later = self.gets - self.cold_starts
        return self.caller_waits / later if later else 0.0

    @property
    def violations(self) -> tuple[str, ...]:
        """The invariants this run broke (none, normally): every get answered, no token served
        within the safety margin, at most one fetch in flight per key and the cap overall."""
        policy = self.config.policy
        broken = []
        if self.still_waiting:
            broken.append(f"{self.still_waiting} gets never answered")
        if self.worst_remaining is not None and self.worst_remaining < policy.safety_margin:
            broken.append(f"a token served with {self.worst_remaining:.1f} s left")
        if self.peak_concurrent_per_key > 1:
            broken.append(f"{self.peak_concurrent_per_key} fetches of one key at once")
        if self.peak_concurrent_fetches > policy.max_concurrent_fetches:
            broken.append(f"{self.peak_concurrent_fetches} fetches in flight at once")
        return tuple(broken)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Draw the run hour by hour into a PNG at ``path``: upstream calls, fetches in flight,
        validity left on served tokens. Needs matplotlib (``pip install
        "lark-token-actors[plot]"``); without it, raises ImportError saying so."""
        c = self.config
        plot_hours(
            self.hours,
            path,
            title=f"Simulated day: {c.tenants:,} tenants, {c.hours:g} virtual hours, step "
            f"{c.step:g} s, failure rate {c.failure_rate:.0%}, {len(c.outages)} outage(s)",
            fetch_cap=c.policy.max_concurrent_fetches,
            safety_margin=c.policy.safety_margin,
            prewarm_lead=c.policy.prewarm_lead,
        )

    def render(self) -> str:
        c = self.config
        hours = self.calls_per_hour
        per_hour = (
            f"min {min(hours)}, mean {sum(hours) / len(hours):.0f}, max {max(hours)}"
            if hours
            else "n/a"
        )
        busiest = max((hour.busiest_step for hour in self.hours), default=0)
        worst = "n/a" if self.worst_remaining is None else f"{self.worst_remaining:.0f} s"
        invariants = (
            f"BROKEN: {'; '.join(self.violations)}"
            if self.violations
            else "hold: every get answered, none served within the margin, <= 1 fetch per "
            f"key, <= {c.policy.max_concurrent_fetches} in all"
        )
        return "\n".join(
            [
                f"simulated {c.tenants} tenants x {c.hours:g} virtual hours "
                f"(step {c.step:g} s, {c.gets_per_step} gets/step, token lifetime "
                f"{c.token_lifetime:g} s, failure rate {c.failure_rate:.0%}, "
                f"{len(c.outages)} outage(s)) in {self.wall_seconds:.1f} s wall time",
                f"  caller gets          {self.gets}  ({self.cold_starts} first gets of a tenant, "
                f"arriving over {c.arrival_window:g} s)",
                f"  later gets that waited  {self.caller_waits}  ({self.later_waits:.2%} of the "
                f"{self.gets - self.cold_starts} after a tenant's first)",
                f"  caller errors        {self.caller_errors}  "
                f"({self.still_waiting} never answered)",
                f"  upstream calls       {self.upstream_calls}  (per hour: {per_hour}; "
                f"busiest step {busiest})",
                f"  peak concurrent      {self.peak_concurrent_fetches} fetches, "
                f"{self.peak_concurrent_per_key} per key",
                f"  least validity left  {worst} on a served token "
                f"(safety margin {c.policy.safety_margin:g} s)",
                f"  invariants           {invariants}",
                f"  wait for an answer   p99 {self.wait_p99:.1f} s, max {self.wait_max:.1f} s; "
                f"{self.late_answers} gets answered after virtual time moved on",
                "    (virtual seconds from a get to its answer, token or error: retry backoff,",
                "    app_ticket waits; an upstream call takes no virtual time. While a get waits,",
                f"    the clock moves timer by timer, at least {c.wait_resolution:g} s at a time, "
                "so waits",
                "    are not rounded up to steps. The performance report's get latency is on the",
                "    same virtual clock, for the gets answered with a token.)",
            ]
        )


def parse_outage(text: str) -> tuple[float, float]:
    """``"3:3.5"`` -> ``(3.0, 3.5)``: an outage from hour 3 to hour 3.5 of the run."""
    start, _, end = text.partition(":")
    try:
        window = (float(start), float(end))
    except ValueError:
        msg = f"outage must look like START_HOUR:END_HOUR, got {text!r}"
        raise ValueError(msg) from None
    if not (math.isfinite(window[1]) and 0 <= window[0] < window[1]):
        msg = f"outage must start at hour >= 0 and end after it starts, got {text!r}"
        raise ValueError(msg)
    return window


def run_simulation(
    config: SimulationConfig, *, progress: Callable[[float], None] | None = None
) -> SimulationReport:
    """Run ``config`` to completion; ``progress`` is called with the fraction done (0.0-1.0)."""
    # Test support, imported only when a simulation runs.
    from actors.testing import FakeFeishu  # noqa: PLC0415
    from actors.testing._transports import InProcessSession  # noqa: PLC0415

    started = time.perf_counter()
    clock = ManualClock(start=0.0)
    with FakeFeishu(
        clock=clock, token_lifetime=config.token_lifetime, latency=config.latency
    ) as server:
        server.add_app(_APP_ID, _SECRET, marketplace=True)
        app = AppConfig(_APP_ID, _SECRET, app_type=AppType.MARKETPLACE, base_url=server.base_url)
        if config.transport == "in-process":
            # Skips requests' request preparation too: about 0.16 ms of CPU per upstream call,
            # three times what the rest of the in-process round trip costs.
            session: requests.Session = InProcessSession(server)
        else:
            session = requests.Session()
            # Proxy and .netrc lookups from the environment cost about 1 ms per request in
            # requests; loopback never needs them, and they would dominate the wall time.
            session.trust_env = False
        with TokenSystem.start(app, policy=config.policy, clock=clock, session=session) as system:
            system.proxy.set_app_ticket(server.issue_ticket(_APP_ID)).get(timeout=30)
            server.set_failure_rate(config.failure_rate, seed=config.seed)
            server.reset_stats()
            run = _Run(system=system, server=server, clock=clock, config=config)
            steps = max(1, round(config.hours * _HOUR / config.step))
            for index in range(steps):
                run.step((index + 1) * config.step)
                if progress is not None:
                    progress((index + 1) / steps)
            run.drain(steps * config.step + _HOUR)
            after = system.metrics()
    hours = run.close()
    return SimulationReport(
        config=config,
        wall_seconds=time.perf_counter() - started,
        gets=run.gets,
        cold_starts=run.cold,
        caller_waits=after.misses + after.coalesced - run.cold,
        caller_errors=run.errors,
        still_waiting=len(run.outstanding),
        upstream_calls=sum(hour.upstream_calls for hour in hours),
        peak_concurrent_fetches=run.peak,
        peak_concurrent_per_key=run.peak_per_key,
        worst_remaining=min(
            (h.min_validity for h in hours if h.min_validity is not None), default=None
        ),
        late_answers=run.late,
        wait_p99=run.waits.percentile(0.99),
        wait_max=run.waits.max,
        hours=hours,
        metrics=after,
    )


class _Run:
    def __init__(
        self,
        *,
        system: TokenSystem,
        server: FakeFeishu,
        clock: ManualClock,
        config: SimulationConfig,
    ) -> None:
        self.system, self.server, self.clock, self.config = system, server, clock, config
        self.rng = random.Random(config.seed)
        tenants = (f"tenant-{i:06d}" for i in range(config.tenants))
        arrivals = sorted((self.rng.uniform(0, config.arrival_window), t) for t in tenants)
        self.pending_arrivals = [t for _, t in reversed(arrivals)]
        self.arrival_times = [a for a, _ in reversed(arrivals)]
        self.arrived: list[str] = []
        self.outstanding: list[tuple[pykka.Future[str], float]] = []  # (future, sent at)
        self.cold = self.gets = self.errors = self.late = 0
        self.waits = LatencyHistogram()  # bounded, whatever the number of gets
        self.peak = self.peak_per_key = 0
        self.step_calls = self.step_peak = 0  # token requests, and most at once, this step
        self.hours = [HourTotals() for _ in range(max(1, math.ceil(config.hours)))]
        self.closed: list[HourStats] = []

    def step(self, end: float) -> None:
        config = self.config
        hour = end / _HOUR
        self.server.set_outage(any(start <= hour < stop for start, stop in config.outages))
        self.step_calls = self.step_peak = 0
        self._advance_to(end)
        keys = [
            self.rng.choice(self.arrived)
            for _ in range(config.gets_per_step if self.arrived else 0)
        ]
        while self.arrival_times and self.arrival_times[-1] <= self.clock.now():
            self.arrival_times.pop()
            tenant = self.pending_arrivals.pop()
            self.arrived.append(tenant)
            keys.append(tenant)  # its first get: a cold start
            self.cold += 1
        now = self.clock.now()
        get_token = self.system.proxy.get_token
        self.outstanding.extend((get_token(tenant_key=k), now) for k in keys)
        self.gets += len(keys)
        self._hour(now).gets += len(keys)
        self._settled()
        current = self._hour(end)
        current.busiest = max(current.busiest, self.step_calls)
        current.in_flight = max(current.in_flight, self.step_peak)
        current.flight_sum += self.step_peak
        current.steps += 1

    def drain(self, until: float) -> None:
        """Let the gets still waiting when the last step ends be answered: the clock moves on,
        timer by timer, up to ``until`` at most (what they add counts in the last hour)."""
        while self.outstanding and (due := self._next_due()) is not None and due <= until:
            self._advance_clock(max(due, self.clock.now() + self.config.wait_resolution))
            self._settled()

    def close(self) -> tuple[HourStats, ...]:
        """The hourly series; call once, after the last step."""
        self.closed.extend(hour.close() for hour in self.hours[len(self.closed) :])
        return tuple(self.closed)

    def _advance_to(self, end: float) -> None:
        clock = self.clock
        # While a caller waits, move from timer to timer (a retry's backoff, a ticket wait), so
        # that its wait is measured in the virtual time it takes, not in whole steps. At least
        # wait_resolution at a time: during an outage thousands of retries are due in a step.
        while self.outstanding:
            due = self._next_due()
            if due is None or due >= end:
                break
            self._advance_clock(min(end, max(due, clock.now() + self.config.wait_resolution)))
            self._settled()
        if clock.now() < end:
            self._advance_clock(end)
            self._settled()

    def _advance_clock(self, to: float) -> None:
        clock = self.clock
        while clock.now() < to:  # now + (to - now) can round to just below ``to``
            clock.advance(max(to - clock.now(), math.ulp(to)))

    def _next_due(self) -> float | None:
        return self.system.next_due(timeout=_SETTLE_TIMEOUT)

    def _settled(self) -> None:
        self.system.settle(timeout=_SETTLE_TIMEOUT)
        if self.outstanding:
            self._harvest()
        self._collect_server_stats()

    def _harvest(self) -> None:
        now = self.clock.now()
        hour = self._hour(now)
        waiting = []
        for future, sent in self.outstanding:
            try:
                token = future.get(timeout=0)
            except pykka.Timeout:  # waiting for a retry or a ticket: virtual time must pass
                waiting.append((future, sent))
                continue
            except TokenError:
                self.errors += 1
                hour.errors += 1
            else:
                self._served(token, now, hour)
            wait = now - sent
            self.waits.record(wait)
            if wait > 0:
                self.late += 1
        self.outstanding = waiting

    def _served(self, token: str, now: float, hour: HourTotals) -> None:
        expires_at = self.server.expires_at(token)
        if expires_at is not None:
            left = expires_at - now
            hour.validity[math.floor(left)] += 1
            hour.least = min(hour.least, left)

    def _hour(self, at: float) -> HourTotals:
        """The running totals of the hour holding virtual time ``at``; earlier hours, which no
        event can reach any more, are closed into their HourStats (and their counters freed)."""
        index = min(len(self.hours) - 1, max(0, math.ceil(at / _HOUR) - 1))
        while len(self.closed) < index:
            done = self.hours[len(self.closed)]
            self.closed.append(done.close())
            done.validity.clear()
        return self.hours[index]

    def _collect_server_stats(self) -> None:
        server = self.server
        calls = [r.at for r in server.requests if r.kind in ("app", "tenant")]
        last, hour = math.nan, None
        for at in calls:  # mostly all at the same virtual instant
            if hour is None or at != last:
                last, hour = at, self._hour(at)
            hour.calls += 1
        self.step_calls += len(calls)
        self.step_peak = max(self.step_peak, server.max_in_flight)
        self.peak = max(self.peak, self.step_peak)
        self.peak_per_key = max(self.peak_per_key, server.max_in_flight_per_key)
        server.reset_stats()

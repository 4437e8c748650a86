"""Simulation harness: many tenants, a virtual day of traffic, deterministic and fast.

A marketplace app with ``tenants`` tenant keys runs on a :class:`~actors.ManualClock` against the
embedded fake Feishu (whose token lifetimes follow the same clock). Each step advances virtual
time, lets the system settle (prewarms and retries fire, fetches complete), then sends a batch
of caller gets to random tenants. The report says what an operator would ask: upstream calls per
hour, peak concurrent fetches, how many callers waited for the network, hit rate, and the least
validity any served token had left.

    from actors.sim import SimulationConfig, run_simulation
    print(run_simulation(SimulationConfig(tenants=1000, hours=24)).render())
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pykka
import requests

from actors._clock import ManualClock
from actors._config import AppConfig, AppType, RefreshPolicy
from actors._errors import TokenError
from actors._metrics import TokenMetrics
from actors._system import TokenSystem

if TYPE_CHECKING:  # test support is imported only when a simulation runs
    from actors.testing import FakeFeishu

__all__ = ["SimulationConfig", "SimulationReport", "parse_outage", "run_simulation"]

_APP_ID = "cli_simulated"
_SECRET = "simulated-secret"


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
    # "in-process": requests reach the fake server through its in-process adapter (the same
    # request handling, no socket); "http": over loopback HTTP, about 3x slower per request.
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimulationReport:
    """The outcome of one run."""

    config: SimulationConfig
    wall_seconds: float
    gets: int
    cold_starts: int  # each tenant's first get, which must wait for its first fetch
    caller_waits: int  # later gets that had to wait for an upstream fetch
    caller_errors: int  # gets that ended in an error
    still_waiting: int  # gets unresolved when the run ended (waiting for a retry)
    upstream_calls: int
    calls_per_hour: tuple[int, ...]
    peak_concurrent_fetches: int
    peak_concurrent_per_key: int
    worst_remaining: float | None  # least validity (s) left on any token served to a caller
    metrics: TokenMetrics

    @property
    def hit_rate(self) -> float:
        warm = self.gets - self.cold_starts
        return 1.0 - self.caller_waits / warm if warm else 0.0

    def render(self) -> str:
        c = self.config
        hours = self.calls_per_hour
        per_hour = (
            f"min {min(hours)}, mean {sum(hours) / len(hours):.0f}, max {max(hours)}"
            if hours
            else "n/a"
        )
        worst = "n/a" if self.worst_remaining is None else f"{self.worst_remaining:.0f} s"
        return "\n".join(
            [
                f"simulated {c.tenants} tenants x {c.hours:g} virtual hours "
                f"(step {c.step:g} s, {c.gets_per_step} gets/step, token lifetime "
                f"{c.token_lifetime:g} s, failure rate {c.failure_rate:.0%}, "
                f"{len(c.outages)} outage(s)) in {self.wall_seconds:.1f} s wall time",
                f"  caller gets          {self.gets}  ({self.cold_starts} first gets of a tenant, "
                f"arriving over {c.arrival_window:g} s)",
                f"  later gets that waited  {self.caller_waits}  (hit rate {self.hit_rate:.2%})",
                f"  caller errors        {self.caller_errors}  "
                f"({self.still_waiting} still waiting at the end)",
                f"  upstream calls       {self.upstream_calls}  (per hour: {per_hour})",
                f"  peak concurrent      {self.peak_concurrent_fetches} fetches, "
                f"{self.peak_concurrent_per_key} per key",
                f"  least validity left  {worst} on a served token "
                f"(safety margin {c.policy.safety_margin:g} s)",
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
    from actors.testing import FakeFeishu  # noqa: PLC0415 - test support, only when running

    started = time.perf_counter()
    rng = random.Random(config.seed)
    clock = ManualClock(start=0.0)
    tenants = [f"tenant-{i:06d}" for i in range(config.tenants)]
    with FakeFeishu(
        clock=clock, token_lifetime=config.token_lifetime, latency=config.latency
    ) as server:
        server.add_app(_APP_ID, _SECRET, marketplace=True)
        app = AppConfig(_APP_ID, _SECRET, app_type=AppType.MARKETPLACE, base_url=server.base_url)
        session = requests.Session()
        # Proxy and .netrc lookups from the environment cost about 1 ms per request in requests;
        # loopback never needs them, and they would dominate a simulation's wall time.
        session.trust_env = False
        if config.transport == "in-process":
            session.mount(server.base_url, server.adapter())
        with TokenSystem.start(app, policy=config.policy, clock=clock, session=session) as system:
            system.proxy.set_app_ticket(server.issue_ticket(_APP_ID)).get(timeout=30)
            server.set_failure_rate(config.failure_rate, seed=config.seed)
            server.reset_stats()
            run = _Run(
                system=system, server=server, clock=clock, rng=rng, tenants=tenants, config=config
            )
            steps = max(1, round(config.hours * 3600 / config.step))
            for index in range(steps):
                run.step()
                if progress is not None:
                    progress((index + 1) / steps)
            after = system.metrics()
    per_hour = [0] * max(1, round(config.hours + 0.4999))
    for request in run.requests:
        per_hour[min(len(per_hour) - 1, int(request / 3600))] += 1
    return SimulationReport(
        config=config,
        wall_seconds=time.perf_counter() - started,
        gets=run.gets,
        cold_starts=run.cold,
        caller_waits=after.misses + after.coalesced - run.cold,
        caller_errors=run.errors,
        still_waiting=len(run.outstanding),
        upstream_calls=len(run.requests),
        calls_per_hour=tuple(per_hour),
        peak_concurrent_fetches=run.peak,
        peak_concurrent_per_key=run.peak_per_key,
        worst_remaining=run.worst,
        metrics=after,
    )


class _Run:
    def __init__(
        self,
        *,
        system: TokenSystem,
        server: FakeFeishu,
        clock: ManualClock,
        rng: random.Random,
        tenants: list[str],
        config: SimulationConfig,
    ) -> None:
        self.system, self.server, self.clock, self.rng = system, server, clock, rng
        self.tenants, self.config = tenants, config
        arrivals = sorted((rng.uniform(0, config.arrival_window), t) for t in tenants)
        self.pending_arrivals = [t for _, t in reversed(arrivals)]
        self.arrival_times = [a for a, _ in reversed(arrivals)]
        self.arrived: list[str] = []
        self.outstanding: list[pykka.Future[str]] = []
        self.cold = 0
        self.gets = 0
        self.errors = 0
        self.worst: float | None = None
        self.requests: list[float] = []
        self.peak = 0
        self.peak_per_key = 0

    def step(self) -> None:
        config, server = self.config, self.server
        hour = (self.clock.now() + config.step) / 3600
        server.set_outage(any(start <= hour < end for start, end in config.outages))
        self.clock.advance(config.step)
        self.system.settle(timeout=120)
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
        self.outstanding.extend(self.system.proxy.get_token(tenant_key=k) for k in keys)
        self.system.settle(timeout=120)
        # A get waiting for a retry or a ticket resolves only when virtual time moves on.
        waiting = []
        for future in self.outstanding:
            try:
                token = future.get(timeout=0)
            except pykka.Timeout:
                waiting.append(future)
                continue
            except TokenError:
                self.errors += 1
                continue
            self._served(token)
        self.outstanding = waiting
        self.gets += len(keys)
        self._collect_server_stats()

    def _served(self, token: str) -> None:
        expires_at = self.server.expires_at(token)
        if expires_at is not None:
            left = expires_at - self.clock.now()
            self.worst = left if self.worst is None else min(self.worst, left)

    def _collect_server_stats(self) -> None:
        server = self.server
        self.requests.extend(r.at for r in server.requests if r.kind in ("app", "tenant"))
        self.peak = max(self.peak, server.max_in_flight)
        self.peak_per_key = max(self.peak_per_key, server.max_in_flight_per_key)
        server.reset_stats()

"""Shared fixtures: a fake Feishu server on loopback, a manual clock, systems that always stop."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from loguru import logger

import actors
from actors.testing import FakeFeishu

APP_ID = "cli_test"
SECRET = "s3cr3t-app-secret-value"
MARKET_ID = "cli_market"
MARKET_SECRET = "m4rket-secret-value"

# Threads this library starts: pykka names actor threads after their class.
OUR_THREAD_PREFIXES = ("TokenActor", "SchedulerActor", "actors-")


def our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(OUR_THREAD_PREFIXES)]


@pytest.fixture
def server() -> Iterator[FakeFeishu]:
    with FakeFeishu() as fake:
        fake.add_app(APP_ID, SECRET)
        fake.add_app(MARKET_ID, MARKET_SECRET, marketplace=True)
        yield fake


@pytest.fixture
def clock() -> actors.ManualClock:
    return actors.ManualClock(start=1_000.0)


@pytest.fixture
def app(server: FakeFeishu) -> actors.AppConfig:
    return actors.AppConfig(APP_ID, SECRET, base_url=server.base_url)


@pytest.fixture
def market_app(server: FakeFeishu) -> actors.AppConfig:
    return actors.AppConfig(
        MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=server.base_url
    )


SystemFactory = Callable[..., actors.TokenSystem]


@pytest.fixture
def make_system(clock: actors.ManualClock) -> Iterator[SystemFactory]:
    """Start systems on the manual clock (seeded jitter); every one is stopped after the test."""
    started: list[actors.TokenSystem] = []

    def make(
        apps: actors.AppConfig | list[actors.AppConfig],
        *,
        clock_: actors.Clock | None = None,
        fast_reads: bool = True,
        **policy: Any,
    ) -> actors.TokenSystem:
        policy.setdefault("seed", 7)
        system = actors.TokenSystem.start(
            apps,
            policy=actors.RefreshPolicy(**policy),
            clock=clock_ or clock,
            fast_reads=fast_reads,
        )
        started.append(system)
        return system

    yield make
    for system in started:
        system.stop()


def drive(
    system: actors.TokenSystem,
    clock: actors.ManualClock,
    future: pykka.Future[Any],
    *,
    step: float = 1.0,
    limit: int = 10_000,
) -> Any:
    """Advance virtual time step by step until ``future`` resolves; return its value or raise."""
    for _ in range(limit):
        system.settle()
        try:
            return future.get(timeout=0)
        except pykka.Timeout:
            clock.advance(step)
    msg = "future did not resolve"
    raise AssertionError(msg)


def forward_tickets(server: FakeFeishu, system: actors.TokenSystem) -> None:
    """Wire the fake server's app_ticket push to the system, as an app's event handler would."""

    def push(app_id: str, ticket: str) -> None:
        system.proxy.set_app_ticket(ticket, app_id=app_id)

    server.on_ticket_resend = push


@pytest.fixture
def vserver(clock: actors.ManualClock) -> Iterator[FakeFeishu]:
    """A fake server whose token lifetimes follow the manual clock."""
    with FakeFeishu(clock=clock) as fake:
        fake.add_app(APP_ID, SECRET)
        fake.add_app(MARKET_ID, MARKET_SECRET, marketplace=True)
        yield fake


@pytest.fixture
def vapp(vserver: FakeFeishu) -> actors.AppConfig:
    """The self-built test app on ``vserver`` (token lifetimes on the manual clock)."""
    return actors.AppConfig(APP_ID, SECRET, base_url=vserver.base_url)


@pytest.fixture
def log() -> Iterator[list[str]]:
    """Everything the library logs, at TRACE, each record whole (message, extra, exception
    with the values of its frames' variables) as loguru serializes it: for the tests that no
    secret or token is ever logged."""
    records: list[str] = []
    logger.enable("actors")
    sink = logger.add(records.append, level="TRACE", serialize=True, backtrace=True, diagnose=True)
    try:
        yield records
    finally:
        logger.remove(sink)
        logger.disable("actors")

"""What the shared-store tests share: a real redis-server, stores and systems that always close,
the stores' WARNING lines, and token sources that count their requests."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from loguru import logger

import actors
from actors.stores import RedisStore
from actors.testing import FunctionSource
from tests.redis_server import RedisServer, require_redis_binary

PREFIX = "lark-token:"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(require_redis_binary())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield connection
    connection.close()


@pytest.fixture
def stores(redis_server: RedisServer) -> Iterator[Callable[..., RedisStore]]:
    """``stores(url=None, **options)``: a RedisStore, on the test's redis-server by default."""
    made: list[RedisStore] = []

    def make(url: str | None = None, **options: Any) -> RedisStore:
        options.setdefault("prefix", PREFIX)
        store = RedisStore(url or redis_server.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def systems() -> Iterator[list[actors.TokenSystem]]:
    started: list[actors.TokenSystem] = []
    yield started
    for system in started:
        system.stop()


@pytest.fixture
def store_warnings() -> Iterator[list[str]]:
    """The WARNING lines of every RedisStore, with the store's address."""
    lines: list[str] = []

    def keep(message: Any) -> None:
        if message.record["extra"].get("component") == "RedisStore":
            lines.append(message.record["message"])

    sink = logger.add(keep, level="WARNING")
    logger.enable("actors")
    yield lines
    logger.disable("actors")
    logger.remove(sink)


def counting_source(
    expire: float = 7200.0, *, latency: float = 0.0, name: str = "shared-token"
) -> FunctionSource:
    """Grants t-000001-<name>, t-000002-<name>, ... one new token per request."""
    numbers = itertools.count(1)
    lock = threading.Lock()

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        if latency:
            time.sleep(latency)
        with lock:
            return actors.Grant(f"t-{next(numbers):06d}-{name}", expire)

    return FunctionSource(fetch)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def text_keys(client: redis.Redis, pattern: str = "*") -> list[str]:
    return sorted(k.decode() if isinstance(k, bytes) else k for k in client.keys(pattern))

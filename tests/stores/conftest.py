"""What the shared-store tests share: a real redis-server, stores and systems that always close,
the stores' WARNING lines, and token sources that count their requests."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
import redis
from loguru import logger

import actors
from actors.stores import RedisStore
from actors.testing import FakeFeishu, FunctionSource
from tests.conftest import APP_ID, MARKET_ID, MARKET_SECRET, SECRET
from tests.redis_server import RedisServer, Relay, fleet_child, require_redis_binary

PREFIX = "lark-token:"
SPAWN = multiprocessing.get_context("spawn")


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


class Fleet:
    """Child processes (spawn), each running ``fleet_child``: one TokenSystem with a store."""

    def __init__(self, size: int) -> None:
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        for _ in range(size):
            parent, child = SPAWN.Pipe()
            process = SPAWN.Process(target=fleet_child, args=(child,), daemon=True)
            process.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(process)

    def send(self, index: int, name: str, *args: Any) -> None:
        self.conns[index].send((name, args))

    def recv(self, index: int, timeout: float = 30.0) -> Any:
        conn = self.conns[index]
        if not conn.poll(timeout):
            raise AssertionError(f"child {index} did not answer within {timeout:g}s")
        status, value = conn.recv()
        if status != "ok":
            raise AssertionError(f"child {index}: {value}")
        return value

    def call(self, index: int, name: str, *args: Any, timeout: float = 30.0) -> Any:
        self.send(index, name, *args)
        return self.recv(index, timeout)

    def call_all(self, name: str, *args: Any, timeout: float = 30.0) -> list[Any]:
        for index in range(len(self.conns)):
            self.send(index, name, *args)
        return [self.recv(index, timeout) for index in range(len(self.conns))]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("exit", ()))
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)


@pytest.fixture
def fleet() -> Iterator[Callable[[int], Fleet]]:
    made: list[Fleet] = []

    def make(size: int) -> Fleet:
        made.append(Fleet(size))
        return made[-1]

    yield make
    for each in made:
        each.close()


def fleet_config(
    server: FakeFeishu,
    redis_server: RedisServer | Relay,
    *,
    marketplace: bool = False,
    store: dict[str, Any] | None = None,
    **policy: Any,
) -> dict[str, Any]:
    return {
        "redis_url": redis_server.url,
        "prefix": PREFIX,
        "store": store or {},
        "app_id": MARKET_ID if marketplace else APP_ID,
        "secret": MARKET_SECRET if marketplace else SECRET,
        "app_type": "marketplace" if marketplace else "self_built",
        "base_url": server.base_url,
        "policy": policy,
    }

"""No secret of a user's login leaves the library in the clear, on SQLite and on Redis.

A whole life of user grants runs through systems on a real SQLite file and on a real
redis-server: logins (one with PKCE), a refused code, rotations (prewarm, invalidate, an answer
of 20050 retried), a second system adopting a grant from the store, a grant the user revoked
(20064), an answer lost on its way (the reused refresh token refused: "interrupted"), the
keep-alive of idle grants, a logout. Every access and refresh token the fake issued, every
authorization code, the PKCE verifier, the app secret and the store's key are then looked for,
in the clear or base64-encoded, in all the library wrote or answered: its log at TRACE (tracebacks
showing variables, as loguru's defaults do), the reprs of grants, errors and events, every error's
traceback, metrics, the performance report, health, the Prometheus text; the SQLite file with its
-wal and -shm as bytes and as SQL; every Redis key and value, and every command and message
Redis saw (MONITOR, PSUBSCRIBE).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import socket
import sqlite3
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pykka
import pytest
import redis
from cryptography.fernet import Fernet
from prometheus_client import CollectorRegistry, generate_latest

import actors
from actors.prometheus import TokenMetricsCollector
from actors.stores import Store
from actors.testing import FakeFeishu, RecordedRequest, Reply, oauth_error
from tests.conftest import APP_ID, SECRET
from tests.redis_server import RedisServer, require_redis_binary
from tests.users.conftest import DAY, REDIRECT, TIMEOUT
from tests.users.test_rotation import run_for

USER = actors.TokenKind.USER
ALICE, BOB, CAROL = "ou_alice", "ou_bob", "ou_carol"
KEY = Fernet.generate_key()
E = TypeVar("E", bound=Exception)
_ALIGNMENTS = range(3)  # base64 writes 3 bytes as 4 characters: a secret lands at one of three


# --- what must stay secret, and where it is looked for ----------------------------------------


class Secrets:
    """Each secret with what it is; found in the clear (also without a ``u-`` style prefix) or
    base64-encoded (standard or URL-safe alphabet, at any alignment) in bytes or text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the fake's threads add what they issue
        self._named: dict[str, str] = {}

    def add(self, what: str, value: str) -> None:
        with self._lock:
            self._named.setdefault(value, what)

    def values(self, prefix: str = "") -> set[str]:
        """The secrets whose description starts with ``prefix``."""
        with self._lock:
            return {value for value, what in self._named.items() if what.startswith(prefix)}

    def leaks(self, where: str, data: str | bytes) -> list[str]:
        """``"<what> in <where>"`` for each secret found in ``data``."""
        haystack = data.encode() if isinstance(data, str) else data
        with self._lock:
            named = dict(self._named)
        return [
            f"{what} in {where}"
            for value, what in named.items()
            if any(form in haystack for form in _forms(value))
        ]


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    prefix, dash, body = secret.partition("-")
    clear = [raw, body.encode()] if dash and len(prefix) <= 3 else [raw]
    encoded = []
    for offset in _ALIGNMENTS:
        # Whatever precedes the secret, the characters of its whole 3-byte groups are these;
        # the last group may mix with what follows, so it is left out.
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded.append(encode(raw[offset:])[:-4])
    return [*clear, raw.hex().encode(), *encoded]


def test_a_secret_is_found_in_the_clear_without_its_prefix_and_base64_encoded() -> None:
    secrets = Secrets()
    token = "u-0123456789abcdef0123456789abcdef"
    secrets.add("an access token", token)
    for offset in _ALIGNMENTS:
        blob = base64.urlsafe_b64encode(b"x" * offset + json.dumps({"t": token}).encode())
        assert secrets.leaks("a blob", b"<" + blob + b">") == ["an access token in a blob"]
    assert secrets.leaks("a log", f"token={token[2:]}") == ["an access token in a log"]
    assert secrets.leaks("a mask", "u-0123…ef") == []  # what the library's logs show of one


@pytest.fixture
def secrets(server: FakeFeishu, monkeypatch: pytest.MonkeyPatch) -> Secrets:
    """The app's secret and the store's key, and every token the fake's OAuth side issues from
    now on (read from its answers to the token endpoints, as the library reads them)."""
    found = Secrets()
    found.add("the app secret", SECRET)
    found.add("the store's Fernet key", KEY.decode())
    answer = server.oauth.answer
    issued = itertools.count(1)

    def recording(req: RecordedRequest, body: Mapping[str, object] | None) -> Reply:
        reply = answer(req, body)
        try:
            fields = json.loads(reply.body) if reply.body else None
        except ValueError:  # the authorize page's redirect, a refusal's HTML
            return reply
        if isinstance(fields, dict):
            number = next(issued)
            for name in ("access_token", "refresh_token"):
                if isinstance(fields.get(name), str):
                    found.add(f"{name} #{number}", fields[name])
        return reply

    monkeypatch.setattr(server.oauth, "answer", recording)
    return found


# --- the stores, and how to read all they hold --------------------------------------------------


class Backend(Protocol):
    def store(self) -> Store:
        """A new store on the backend (one per system)."""
        ...

    def contents(self) -> Iterator[tuple[str, bytes]]:
        """Everything the backend holds (and, for Redis, was told), as (where, data)."""
        ...


class SqliteFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def store(self) -> Store:
        return actors.SqliteStore(self.path, key=KEY)

    def contents(self) -> Iterator[tuple[str, bytes]]:
        for suffix in ("", "-wal", "-shm"):
            part = self.path.with_name(self.path.name + suffix)
            if part.exists():
                yield f"the SQLite file {part.name}", part.read_bytes()
        # As SQL too: a value longer than a page is split over overflow pages in the file.
        db = sqlite3.connect(self.path)
        try:
            yield "the SQLite dump", "\n".join(db.iterdump()).encode()
        finally:
            db.close()


class Tap:
    """A raw connection to Redis in MONITOR or PSUBSCRIBE mode: every byte Redis sends it."""

    def __init__(self, port: int, command: bytes) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self._sock.settimeout(None)  # recv() waits until close() shuts the socket down
        self._sock.sendall(command)
        self._data = bytearray()
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="test-redis-tap", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := self._sock.recv(1 << 16):
                with self._arrived:
                    self._data += chunk
                    self._arrived.notify_all()
        except OSError:
            pass  # close() shut the socket down

    def through(self, marker: bytes) -> bytes:
        """All received up to and including ``marker`` (sent after everything to be seen)."""
        with self._arrived:
            assert self._arrived.wait_for(lambda: marker in self._data, TIMEOUT), marker
            return bytes(self._data)

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(TIMEOUT)


_READS: Mapping[bytes, Callable[[redis.Redis, bytes], object]] = {
    b"string": lambda client, key: client.get(key),
    b"hash": lambda client, key: client.hgetall(key),
    b"list": lambda client, key: client.lrange(key, 0, -1),
    b"set": lambda client, key: client.smembers(key),
    b"zset": lambda client, key: client.zrange(key, 0, -1, withscores=True),
    b"stream": lambda client, key: client.xrange(key),
}


class RedisBackend:
    def __init__(self, server: RedisServer) -> None:
        self._server = server
        self._client = redis.Redis.from_url(server.url, socket_timeout=TIMEOUT)
        self._monitor = Tap(server.port, b"MONITOR\r\n")
        self._messages = Tap(server.port, b"PSUBSCRIBE *\r\n")
        self._marks = itertools.count(1)

    def store(self) -> Store:
        return actors.RedisStore(self._server.url, key=KEY)

    def contents(self) -> Iterator[tuple[str, bytes]]:
        client = self._client
        for key in client.scan_iter(count=1000):
            kind: bytes = client.type(key)  # type: ignore[assignment]
            yield f"the Redis key name {key!r}", key
            yield f"the Redis {kind!r} {key!r}", repr(_READS[kind](client, key)).encode()
            yield f"the DUMP of Redis key {key!r}", client.dump(key) or b""
        marker = f"secrets-test-mark-{next(self._marks)}".encode()
        client.echo(marker)
        client.publish("secrets-test", marker)
        yield "the commands Redis was sent (MONITOR)", self._monitor.through(marker)
        yield "the messages Redis published (PSUBSCRIBE)", self._messages.through(marker)

    def close(self) -> None:
        self._monitor.close()
        self._messages.close()
        self._client.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SqliteFile(tmp_path / "grants.db")
        return
    server = RedisServer(require_redis_binary())
    server.start()
    made = RedisBackend(server)
    try:
        yield made
    finally:
        made.close()
        server.close()


@dataclasses.dataclass
class Running:
    """The systems of a test with their stores, and every event they published."""

    app: actors.AppConfig
    clock: actors.ManualClock
    backend: Backend
    systems: list[tuple[actors.TokenSystem, Store]] = dataclasses.field(default_factory=list)
    events: list[object] = dataclasses.field(default_factory=list)

    def start(self) -> actors.TokenSystem:
        store = self.backend.store()
        policy = actors.RefreshPolicy(seed=7, retry_base=0.0, max_attempts=3)
        system = actors.TokenSystem.start(self.app, policy=policy, clock=self.clock, store=store)
        self.systems.append((system, store))
        system.subscribe(self.events.append)
        return system

    def stop(self) -> None:
        while self.systems:
            system, store = self.systems.pop()
            system.stop()
            store.close()


@pytest.fixture
def running(
    app: actors.AppConfig, clock: actors.ManualClock, backend: Backend
) -> Iterator[Running]:
    made = Running(app, clock, backend)
    try:
        yield made
    finally:
        made.stop()


# --- the life of three users' grants ------------------------------------------------------------


def refusal(future: pykka.Future[Any], error: type[E]) -> E:
    with pytest.raises(error) as caught:
        future.get(timeout=TIMEOUT)
    return caught.value


def user_token(system: actors.TokenSystem, user: str) -> str:
    return system.proxy.get_token(USER, user=user).get(timeout=TIMEOUT)


@dataclasses.dataclass
class Life:
    """What the users' life left in the test's hands: grants, errors, the tokens served."""

    grants: list[actors.UserGrant] = dataclasses.field(default_factory=list)
    errors: list[Exception] = dataclasses.field(default_factory=list)
    served: set[str] = dataclasses.field(default_factory=set)


def log_in(system: actors.TokenSystem, server: FakeFeishu, secrets: Secrets, life: Life) -> str:
    """Alice (with PKCE), Bob and Carol log in; the code of the last login."""
    verifier, challenge = actors.pkce_pair()
    secrets.add("the PKCE verifier", verifier)
    code = ""
    for user in (ALICE, BOB, CAROL):
        pkce = user == ALICE
        code = server.oauth.issue_code(
            APP_ID, REDIRECT, user=user, code_challenge=challenge if pkce else None
        )
        secrets.add(f"the authorization code of {user}", code)
        redeemed = system.proxy.redeem_code(
            code, redirect_uri=REDIRECT, code_verifier=verifier if pkce else None
        )
        life.grants.append(redeemed.get(timeout=TIMEOUT))
        life.served.add(user_token(system, user))
    return code


def rotate(system: actors.TokenSystem, server: FakeFeishu, clock: actors.ManualClock) -> set[str]:
    """Alice's grant rotates: prewarms of a token being read, an invalidation, an answer of
    20050 retried; the tokens served meanwhile."""
    served = set()
    for _ in range(3):
        run_for(system, clock, 7200.0 - 300.0)
        served.add(user_token(system, ALICE))
    for failure in ((), (oauth_error(20050),)):
        server.script("user", *failure)
        assert system.proxy.invalidate(user_token(system, ALICE)).get(timeout=TIMEOUT)
        served.add(user_token(system, ALICE))
    return served


def end_grants(system: actors.TokenSystem, server: FakeFeishu) -> list[Exception]:
    """Bob withdraws the authorization (his refresh token is answered 20064); Carol's rotation
    goes through but its answer is lost (the next one presents a dead refresh token)."""
    server.oauth.revoke(BOB)
    assert system.proxy.invalidate(user_token(system, BOB)).get(timeout=TIMEOUT)
    revoked = refusal(system.proxy.get_token(USER, user=BOB), actors.ReauthorizationRequired)
    assert (revoked.reason, revoked.code) == ("revoked", 20064)
    server.oauth.lose_answer(Reply.disconnect(), user=CAROL)
    assert system.proxy.invalidate(user_token(system, CAROL)).get(timeout=TIMEOUT)
    lost = refusal(system.proxy.get_token(USER, user=CAROL), actors.ReauthorizationRequired)
    assert lost.reason == "interrupted"
    return [revoked, lost]


def live(running: Running, server: FakeFeishu, secrets: Secrets) -> tuple[Life, actors.TokenSystem]:
    """The users' whole life on one system (and a second one for a while); that system."""
    server.oauth.add_user(CAROL, name="Carol")
    one, life = running.start(), Life()
    code = log_in(one, server, secrets, life)
    again = one.proxy.redeem_code(code, redirect_uri=REDIRECT)
    life.errors.append(refusal(again, actors.AuthorizationCodeError))
    life.served |= rotate(one, server, running.clock)
    # A second system finds Alice's grant in the store (opens its sealed tokens) and serves it.
    two = running.start()
    life.served.add(user_token(two, ALICE))
    life.grants += one.users()
    two.stop()
    life.errors += end_grants(one, server)
    # Nobody reads Alice's token for days: her grant is kept alive; then she logs out.
    run_for(one, running.clock, 6.5 * DAY)
    assert one.proxy.forget_user(ALICE).get(timeout=TIMEOUT) is True
    forgotten = refusal(one.proxy.get_token(USER, user=ALICE), actors.ReauthorizationRequired)
    life.errors.append(forgotten)
    one.settle()
    return life, one


def traceback_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def answers(
    system: actors.TokenSystem, life: Life, events: list[object]
) -> Iterator[tuple[str, str | bytes]]:
    """What the library answered: grants, errors, events, metrics in every form."""
    for grant in life.grants:
        yield f"the repr of {grant.open_id}'s grant", repr(grant)
    for error in life.errors:
        name = type(error).__name__
        yield f"str() of {name}", str(error)
        yield f"the repr of {name}", repr(error)
        yield f"the traceback of {name}", traceback_text(error)
    for event in events:
        yield f"the repr of {type(event).__name__}", repr(event)
        failure = getattr(event, "error", None)
        if isinstance(failure, BaseException):
            yield "the traceback of a RefreshFailed's error", traceback_text(failure)
    yield "metrics()", repr(system.metrics())
    yield "performance_report()", system.performance_report()
    yield "health()", repr(system.health())
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(system))
    yield "the Prometheus text", generate_latest(registry)


def test_no_token_code_verifier_or_secret_appears_in_any_output_or_in_the_store(
    running: Running, server: FakeFeishu, secrets: Secrets, log: list[str]
) -> None:
    life, system = live(running, server, secrets)

    # Every token issued was seen: those served, and each login's and rotation's refresh token
    # but for Carol's lost rotation, whose answer never reached the library.
    access, refresh = secrets.values("access_token"), secrets.values("refresh_token")
    assert life.served <= access
    assert server.oauth.rotations() >= 6
    assert len(refresh) == len(access) == 3 + server.oauth.rotations() - 1
    assert server.oauth.refresh_reuses == 1  # Carol's lost answer, and only that
    # The search finds them where they are (the fake records the bearer tokens it was sent),
    # and what it searches holds the users' activity.
    assert secrets.leaks("the fake's requests", repr(server.requests))
    kinds = {type(event) for event in running.events}
    assert {actors.TokenRefreshed, actors.RefreshFailed, actors.ReauthorizationNeeded} <= kinds
    assert all(user in "\n".join(log) for user in (ALICE, BOB, CAROL))

    said = [("the log", "\n".join(log)), *answers(system, life, running.events)]
    held = list(running.backend.contents())
    running.stop()  # closing checkpoints SQLite's WAL into the file
    held += [(f"{where}, once closed", data) for where, data in running.backend.contents()]
    assert sum(len(data) for _, data in held) > 4096
    said += [*held, ("the log, once stopped", "\n".join(log))]
    assert [leak for where, data in said for leak in secrets.leaks(where, data)] == []

"""User grants on the durable stores, through running systems: a restart keeps the user logged
in, two systems on one store share one grant (one redemption), a logout reaches the other
system, and the key rules (none: a clear ValueError; a wrong one: StoreKeyError, nothing lost).
Each test runs on a real SQLite file and on a real redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

import actors
from actors.stores import Store
from actors.testing import FakeFeishu
from tests.conftest import APP_ID
from tests.redis_server import RedisServer, require_redis_binary
from tests.users.conftest import REDIRECT, TIMEOUT, login

USER = actors.TokenKind.USER
KEY = Fernet.generate_key()
StoreFactory = Callable[..., Store]


@pytest.fixture(params=["sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``stores(key=KEY)``: a new store on the test's one SQLite file or redis-server."""
    made: list[Store] = []
    server: RedisServer | None = None
    if request.param == "redis":
        server = RedisServer(require_redis_binary())
        server.start()

    def make(*, key: object = KEY) -> Store:
        store: Store
        if server is not None:
            store = actors.RedisStore(server.url, key=key)  # type: ignore[arg-type]
        else:
            store = actors.SqliteStore(tmp_path / "tokens.db", key=key)  # type: ignore[arg-type]
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            store.close()
        if server is not None:
            server.close()


@pytest.fixture
def start(
    app: actors.AppConfig, clock: actors.ManualClock
) -> Iterator[Callable[[Store], actors.TokenSystem]]:
    started: list[actors.TokenSystem] = []

    def make(store: Store) -> actors.TokenSystem:
        policy = actors.RefreshPolicy(seed=7)
        system = actors.TokenSystem.start(app, policy=policy, clock=clock, store=store)
        started.append(system)
        return system

    yield make
    for system in started:
        system.stop()


def test_a_restarted_system_serves_the_user_without_a_new_login(
    stores: StoreFactory, start: Callable[[Store], actors.TokenSystem], server: FakeFeishu
) -> None:
    first = start(stores())
    login(first, server)
    token = first.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    first.stop()
    exchanges = server.count("user")
    second = start(stores())
    assert [g.open_id for g in second.users()] == ["ou_alice"]
    assert second.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT) == token
    assert server.count("user") == exchanges  # no code exchange, no redemption


def test_two_systems_on_one_store_rotate_a_grant_once(
    stores: StoreFactory, start: Callable[[Store], actors.TokenSystem], server: FakeFeishu
) -> None:
    one, two = start(stores()), start(stores())
    login(one, server)
    old = two.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)  # adopted from the store
    assert one.proxy.invalidate(old).get(timeout=TIMEOUT)
    new = one.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    assert new != old
    # The other system's cached token is refused by a business API: it rotates too, and
    # finds the grant the first one committed instead of redeeming the dead refresh token.
    assert two.proxy.invalidate(old).get(timeout=TIMEOUT)
    assert two.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT) == new
    assert server.oauth.rotations("ou_alice") == 1
    assert server.oauth.refresh_reuses == 0


def test_a_logout_in_one_system_reaches_the_other(
    stores: StoreFactory, start: Callable[[Store], actors.TokenSystem], server: FakeFeishu
) -> None:
    one, two = start(stores()), start(stores())
    login(one, server)
    two.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    actors.testing.wait_listening(two._process.store, timeout=TIMEOUT)  # type: ignore[arg-type]
    assert one.proxy.forget_user("ou_alice").get(timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    refusal: actors.ReauthorizationRequired | None = None
    while refusal is None:  # the notice arrives within the store's poll (SQLite) or at once
        try:
            two.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
        except actors.ReauthorizationRequired as exc:
            refusal = exc
        assert time.monotonic() < deadline, "the logout never reached the other system"
        time.sleep(0.02)
    assert refusal.reason == "unknown_user"
    assert two.users() == []


def test_a_store_without_a_key_refuses_a_login_and_says_how_to_make_one(
    stores: StoreFactory,
    start: Callable[[Store], actors.TokenSystem],
    server: FakeFeishu,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEISHU_TOKEN_KEY", raising=False)
    system = start(stores(key=None))
    code = server.oauth.issue_code(APP_ID, REDIRECT)
    with pytest.raises(ValueError, match="python -m actors keygen"):
        system.proxy.redeem_code(code, redirect_uri=REDIRECT).get(timeout=TIMEOUT)
    assert system.proxy.get_token().get(timeout=TIMEOUT)  # tenant tokens need no key


def test_a_wrong_key_is_a_store_key_error_that_destroys_nothing(
    stores: StoreFactory, start: Callable[[Store], actors.TokenSystem], server: FakeFeishu
) -> None:
    first = start(stores())
    login(first, server)
    token = first.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    first.stop()
    wrong = start(stores(key=Fernet.generate_key()))
    with pytest.raises(actors.StoreKeyError):
        wrong.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    wrong.stop()
    rotated = start(stores(key=[Fernet.generate_key(), KEY]))  # a new key first, the old kept
    assert rotated.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT) == token


def test_a_running_system_keeps_alive_a_grant_another_one_logged_in_and_left(
    stores: StoreFactory,
    start: Callable[[Store], actors.TokenSystem],
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    keeper = start(stores())  # started before the login: it learns of it from the store
    visitor = start(stores())
    login(visitor, server)
    visitor.stop()
    end = clock.now() + 6.5 * 86400
    keeper.settle()
    while (due := keeper.next_due()) is not None and due <= end:
        clock.advance(max(0.0, due - clock.now()))
        keeper.settle()
    assert server.oauth.rotations("ou_alice") >= 1
    assert server.oauth.grant_alive("ou_alice", app_id=APP_ID)
    assert server.oauth.refresh_reuses == 0


def test_after_a_lost_key_the_user_can_log_out_and_in_again_and_the_others_are_listed(
    stores: StoreFactory, start: Callable[[Store], actors.TokenSystem], server: FakeFeishu
) -> None:
    first = start(stores())
    login(first, server)
    first.stop()
    other_key = Fernet.generate_key()
    second = start(stores(key=other_key))
    login(second, server, "ou_bob")
    assert [g.open_id for g in second.users()] == ["ou_bob"]  # Alice's grant: not readable
    with pytest.raises(actors.StoreKeyError):
        second.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    login(second, server)  # a new login replaces what no key here opens
    assert second.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    assert [g.open_id for g in second.users()] == ["ou_alice", "ou_bob"]
    second.stop()
    third = start(stores(key=KEY))  # the old key: Alice's new grant is not its either
    assert third.proxy.forget_user("ou_alice").get(timeout=TIMEOUT) is True
    assert [g.open_id for g in third.users()] == []


def test_a_stop_waits_for_the_rotation_under_way_so_no_refresh_token_is_lost(
    stores: StoreFactory, start: Callable[[Store], actors.TokenSystem], server: FakeFeishu
) -> None:
    first = start(stores())
    login(first, server)
    old = first.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    gate = server.hold("user")
    first.proxy.invalidate(old).get(timeout=TIMEOUT)
    rotating = first.proxy.get_token(USER, user="ou_alice")
    assert gate.wait_for_waiting(1)  # the refresh token is at Feishu
    stopper = threading.Thread(target=first.stop)
    stopper.start()
    deadline = time.monotonic() + TIMEOUT
    while not first._process.closed.is_set():  # stop() has begun: no redemption starts now
        assert time.monotonic() < deadline
        time.sleep(0.005)
    gate.release()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    try:  # its caller got the new token, or was told the system stopped
        answered: str | None = rotating.get(timeout=TIMEOUT)
    except actors.SystemStoppedError:
        answered = None
    second = start(stores())
    new = second.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    assert new != old  # the grant the stopping system committed
    assert answered in (None, new)
    second.proxy.invalidate(new).get(timeout=TIMEOUT)
    assert second.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    assert server.oauth.rotations("ou_alice") == 2
    assert server.oauth.refresh_reuses == 0

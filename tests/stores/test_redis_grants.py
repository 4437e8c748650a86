"""A RedisStore's user grants on a real redis-server: the layout, encryption at rest, keys,
the persistence warning, a failing Redis and unusable values. What every GrantBook does is
``test_grant_books.py``'s; this file is what only Redis has."""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis
from cryptography.fernet import Fernet

import actors
from actors.stores import RedisStore
from actors.stores import _layout as layout
from actors.stores._grants import KEY_ENV, StoredGrant
from actors.stores._redis import RedisGrants
from actors.stores._shared import Unavailable
from actors.testing._stores import store_faults
from tests.conftest import APP_ID, SECRET
from tests.redis_server import RedisServer
from tests.stores.conftest import PREFIX

APP = actors.AppConfig(APP_ID, SECRET, base_url="http://127.0.0.1:9")
KEY, OTHER_KEY = Fernet.generate_key(), Fernet.generate_key()
USER = "ou_alice"
ALICE = layout.GrantKeys.of(PREFIX, APP, USER)
LEASE_MS = 5_000
PERSISTS_NOTHING = "persists nothing"


def grant(user: str = USER, **fields: Any) -> StoredGrant:
    """A fresh grant with tokens of its own."""
    values: dict[str, Any] = {
        "app_id": APP.app_id,
        "open_id": user,
        "access_token": f"u-{secrets.token_hex(12)}",
        "refresh_token": f"ur-{secrets.token_hex(12)}",
        "expires_at_ms": 1_700_000_000_000 + 7_200_000,
        "refresh_expires_at_ms": 1_700_000_000_000 + 604_800_000,
        "scope": ("docs:read", "offline_access"),
        "granted_at_ms": 1_700_000_000_000,
    }
    return StoredGrant(**{**values, **fields})


@pytest.fixture
def books(stores: Callable[..., RedisStore]) -> Callable[..., RedisGrants]:
    """``books(**store options)``: a RedisStore's grants (key=KEY unless told), its app served."""

    def make(**options: Any) -> RedisGrants:
        options.setdefault("key", KEY)
        store = stores(**options)
        store.serves(APP)
        return store.grants()

    return make


@pytest.fixture
def book(books: Callable[..., RedisGrants]) -> RedisGrants:
    return books()


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def store_of(book: RedisGrants) -> RedisStore:
    store: RedisStore = book._store
    return store


def contents(redis_client: redis.Redis, key: bytes | str) -> list[bytes]:
    """Every byte of a key's value, in an order of their own (a hash's DUMP follows its table,
    which rehashing reorders): a string, a hash's fields and values, a set's members."""
    client: Any = redis_client  # answers are bytes: the client does not decode them
    kind = client.type(key)
    if kind == b"string":
        return [client.get(key) or b""]
    if kind == b"hash":
        return [part for pair in sorted(client.hgetall(key).items()) for part in pair]
    if kind == b"set":
        return sorted(client.smembers(key))
    return [client.dump(key) or b""]


def everything(client: redis.Redis) -> dict[bytes, list[bytes]]:
    """Every key of the server with every byte of its value."""
    return {key: contents(client, key) for key in cast(Any, client).scan_iter(count=1000)}


def snapshot(client: redis.Redis, key: str) -> tuple[object, object, list[bytes]]:
    """A key's type, lifetime and contents."""
    return client.type(key), client.pttl(key), contents(client, key)


def committed(book: RedisGrants, written: StoredGrant, *, expect: int | None = 0) -> int:
    version = book.commit(written, expect=expect)
    assert version is not None
    return version


# --- the layout ----------------------------------------------------------------------------------


def test_a_grant_is_one_hash_with_its_tokens_sealed_and_no_ttl(
    book: RedisGrants, client: redis.Redis
) -> None:
    written = grant()

    version = committed(book, written)

    stored: dict[bytes, bytes] = cast(Any, client).hgetall(ALICE.value)
    fields = {k.decode(): v.decode() for k, v in stored.items()}
    assert set(fields) == set(layout.GRANT_FIELDS)
    sealed = Fernet(KEY).decrypt(fields.pop("sealed").encode())
    opened = StoredGrant.opened(sealed, app_id=APP.app_id, open_id=USER)
    assert opened == (written.access_token, written.refresh_token)
    assert fields == {
        "v": "2",
        "owner": ALICE.owner,
        "app_id": APP_ID,
        "open_id": USER,
        "scope": '["docs:read", "offline_access"]',
        "expires_at_ms": str(written.expires_at_ms),
        "refresh_expires_at_ms": str(written.refresh_expires_at_ms),
        "granted_at_ms": str(written.granted_at_ms),
        "ver": str(version),
        "rotating": "",
        "ended": "",
    }
    assert client.pttl(ALICE.value) == -1  # it outlives every access token
    assert client.smembers(ALICE.index) == {USER.encode()}
    assert client.get(ALICE.counter) == str(version).encode()


def test_grant_keys_share_the_apps_hash_tag_and_never_name_the_secret() -> None:
    odd = layout.GrantKeys.of(PREFIX, APP, "ou_a:b}{c")
    keys = (odd.value, odd.lease, odd.index, odd.counter)

    tag = layout.app_base(PREFIX, APP)[len(PREFIX) :]
    assert all(key.startswith(PREFIX + tag) for key in keys)
    assert all(key.count("{") == 1 and key.count("}") == 1 for key in keys)
    assert odd.value.endswith(":user:ou_a%3Ab%7D%7Bc")
    assert not any(SECRET in key for key in keys)


def test_no_token_byte_reaches_any_redis_value(book: RedisGrants, client: redis.Redis) -> None:
    alice, bob, rotated = grant(), grant("ou_bob"), grant()
    first = committed(book, alice)
    committed(book, bob)
    assert book.lease(APP, USER, "holder-a", lease_ms=LEASE_MS) == 0
    assert book.begin(APP, USER, "holder-a", version=first)
    second = committed(book, rotated, expect=first)
    assert book.end(APP, "ou_bob", "revoked", expect=committed(book, bob, expect=None))
    assert book.read(APP, USER) == dataclasses.replace(rotated, version=second)

    tokens = [
        t.encode() for g in (alice, bob, rotated) for t in (g.access_token, g.refresh_token) if t
    ]
    stored = everything(client)
    assert ALICE.value.encode() in stored and ALICE.lease.encode() in stored
    leaks = [
        (key, token)
        for key, parts in stored.items()
        for part in (key, *parts)
        for token in tokens
        if token in part
    ]
    assert leaks == []


def test_the_book_is_named_like_the_store_never_with_the_password(
    stores: Callable[..., RedisStore], client: redis.Redis, redis_server: RedisServer
) -> None:
    cast(Any, client).execute_command(
        "ACL", "SETUSER", "grants", "on", ">pw-hunter2", "~*", "&*", "+@all"
    )
    store = stores(f"redis://grants:pw-hunter2@127.0.0.1:{redis_server.port}/0", key=KEY)

    book = store.grants()

    assert book is store.grants()  # one book per store
    assert book.name == f"RedisStore redis://127.0.0.1:{redis_server.port}/0 prefix={PREFIX!r}"
    assert "hunter2" not in book.name + repr(store)
    store.serves(APP)
    assert book.commit(grant(), expect=0) == 1  # it is the password Redis was given


# --- keys and encryption -------------------------------------------------------------------------


def test_a_grant_sealed_with_another_key_raises_store_key_error_and_stays_as_it_was(
    books: Callable[..., RedisGrants], client: redis.Redis
) -> None:
    written = grant()
    committed(books(), written)
    before = snapshot(client, ALICE.value)
    stranger = books(key=OTHER_KEY)

    with pytest.raises(actors.StoreKeyError) as raised:
        stranger.read(APP, USER)
    assert stranger.grants(APP) == []  # listed as absent: the other users' grants still list

    assert raised.value.store == stranger.name
    assert written.refresh_token is not None and written.refresh_token not in str(raised.value)
    assert snapshot(client, ALICE.value) == before
    assert books().read(APP, USER) is not None  # the right key still opens it


def test_keys_rotate_the_first_seals_and_every_one_opens(
    books: Callable[..., RedisGrants],
) -> None:
    old = grant()
    version = committed(books(key=KEY), old)
    both = books(key=[OTHER_KEY, KEY])

    assert both.read(APP, USER) == dataclasses.replace(old, version=version)
    new = grant()
    rewritten = committed(both, new, expect=version)

    assert books(key=OTHER_KEY).read(APP, USER) == dataclasses.replace(new, version=rewritten)
    with pytest.raises(actors.StoreKeyError):
        books(key=KEY).read(APP, USER)


def test_the_key_may_come_from_the_environment(
    books: Callable[..., RedisGrants], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, f"{OTHER_KEY.decode()},{KEY.decode()}")
    written = grant()

    version = committed(books(key=None), written)

    assert books(key=OTHER_KEY).read(APP, USER) == dataclasses.replace(written, version=version)


@pytest.mark.usefixtures("no_env_key")
def test_without_a_key_a_store_refuses_to_keep_grants_and_says_how_to_make_one(
    books: Callable[..., RedisGrants], client: redis.Redis
) -> None:
    keyless = books(key=None)

    with pytest.raises(ValueError, match="python -m actors keygen"):
        keyless.check_writable()
    with pytest.raises(ValueError, match="python -m actors keygen"):
        keyless.commit(grant(), expect=0)

    assert everything(client) == {}
    committed(books(), grant())
    with pytest.raises(actors.StoreKeyError):
        keyless.read(APP, USER)


def test_a_key_that_is_not_a_fernet_key_is_refused_without_quoting_it(
    stores: Callable[..., RedisStore],
) -> None:
    for bad in ("not-a-key-hunter2", [], [KEY, "hunter2"], 42):
        with pytest.raises(ValueError, match="python -m actors keygen") as raised:
            stores(key=bad)
        assert "hunter2" not in str(raised.value)


def test_a_reopened_store_keeps_the_key(books: Callable[..., RedisGrants]) -> None:
    written = grant()
    book = books(key=[OTHER_KEY, KEY])
    version = committed(book, written)

    reopened = store_of(book).reopened()
    try:
        reopened.serves(APP)
        assert reopened.grants().read(APP, USER) == dataclasses.replace(written, version=version)
        assert reopened.grants().name == book.name
    finally:
        reopened.close()


# --- the persistence warning ---------------------------------------------------------------------


def test_a_redis_that_persists_nothing_is_warned_about_once_at_the_first_grant(
    book: RedisGrants, client: redis.Redis, store_warnings: list[str]
) -> None:
    # The test server runs with --appendonly no --save "".
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("save") == {"save": ""}
    assert book.read(APP, USER) is None
    assert store_warnings == []  # reading is not keeping

    version = committed(book, grant())
    committed(book, grant(), expect=version)
    committed(book, grant("ou_bob"))

    assert len(store_warnings) == 1
    assert PERSISTS_NOTHING in store_warnings[0] and "appendonly yes" in store_warnings[0]


@pytest.mark.parametrize(
    ("setting", "value"), [("appendonly", "yes"), ("save", "3600 1")], ids=["aof", "rdb"]
)
def test_a_redis_that_persists_is_not_warned_about(
    book: RedisGrants,
    client: redis.Redis,
    store_warnings: list[str],
    setting: str,
    value: str,
) -> None:
    client.config_set(setting, value)

    committed(book, grant())

    assert store_warnings == []


def test_a_redis_that_refuses_config_is_not_judged_and_keeps_grants(
    stores: Callable[..., RedisStore],
    client: redis.Redis,
    redis_server: RedisServer,
    store_warnings: list[str],
) -> None:
    # A managed Redis: CONFIG is not for its users.
    cast(Any, client).execute_command(
        "ACL", "SETUSER", "app", "on", ">app-password", "~*", "&*", "+@all", "-config"
    )
    store = stores(f"redis://app:app-password@127.0.0.1:{redis_server.port}/0", key=KEY)
    store.serves(APP)
    book = store.grants()

    version = committed(book, grant())
    committed(book, grant(), expect=version)

    assert store_warnings == []
    assert store_faults(store) == {} and store.health().last_error is None  # nothing failed


# --- a failing Redis -----------------------------------------------------------------------------


def every_operation(book: RedisGrants) -> dict[str, Callable[[], object]]:
    return {
        "read": lambda: book.read(APP, USER),
        "lease": lambda: book.lease(APP, USER, "holder-a", lease_ms=LEASE_MS),
        "begin": lambda: book.begin(APP, USER, "holder-a", version=1),
        "commit": lambda: book.commit(grant(), expect=1),
        "end": lambda: book.end(APP, USER, "revoked", expect=1),
        "forget": lambda: book.forget(APP, USER),
        "grants": lambda: book.grants(APP),
    }


def test_a_dead_redis_makes_every_operation_unavailable_at_once(
    book: RedisGrants, redis_server: RedisServer
) -> None:
    committed(book, grant())
    redis_server.kill()

    for name, operation in every_operation(book).items():
        started = time.monotonic()
        with pytest.raises(Unavailable):
            operation()
        assert time.monotonic() - started < 1.0, name
    book.release(APP, USER, "holder-a")  # never raises


def test_a_hung_redis_makes_an_operation_unavailable_within_its_op_timeout(
    books: Callable[..., RedisGrants], redis_server: RedisServer
) -> None:
    book = books(op_timeout=0.5, failure_threshold=2)
    committed(book, grant())
    redis_server.pause()
    try:
        took = []
        for operation in every_operation(book).values():
            started = time.monotonic()
            with pytest.raises(Unavailable):
                operation()
            took.append(time.monotonic() - started)
        book.release(APP, USER, "holder-a")
    finally:
        redis_server.resume()

    assert max(took) < 1.5  # one op_timeout, then the open breaker answers at once
    assert store_of(book).health().breaker_open


# --- unusable values -----------------------------------------------------------------------------


def break_field(client: redis.Redis, field: str, value: str) -> None:
    client.hset(ALICE.value, field, value)


GARBAGE: dict[str, tuple[Callable[[redis.Redis], object], str]] = {
    "a string": (
        lambda c: (c.delete(ALICE.value), c.set(ALICE.value, "u-x")),
        "another Redis type",
    ),
    "no version": (lambda c: c.hdel(ALICE.value, "ver"), "no ver"),
    "a float version": (lambda c: break_field(c, "ver", "1e3"), "not a time or version"),
    "version 0": (lambda c: break_field(c, "ver", "0"), "not a time or version"),
    "a negative time": (lambda c: break_field(c, "expires_at_ms", "-5"), "not a time or version"),
    "a huge time": (
        lambda c: break_field(c, "granted_at_ms", "9" * 17),
        "not a time or version",
    ),
    "another format": (lambda c: break_field(c, "v", "3"), "unknown format"),
    "another owner": (lambda c: break_field(c, "owner", "0" * 32), "written for another key"),
    "another app": (
        lambda c: break_field(c, "app_id", "cli_other"),
        "written for another app or user",
    ),
    "a scope object": (lambda c: break_field(c, "scope", '{"a": "b"}'), "not a scope"),
    "a scope of numbers": (lambda c: break_field(c, "scope", "[1]"), "not a scope"),
    "a scope not json": (lambda c: break_field(c, "scope", "[docs"), "not a scope"),
    "sealed not base64": (lambda c: break_field(c, "sealed", "u-abc def"), "not sealed tokens"),
    "sealed too long": (lambda c: break_field(c, "sealed", "g" * 20_000), "not sealed tokens"),
    "sealed not fernet": (lambda c: break_field(c, "sealed", "AAAA" * 30), "not sealed tokens"),
    "sealed cut short": (
        lambda c: break_field(c, "sealed", Fernet(KEY).encrypt(b"[]").decode()[:-4]),
        "not sealed tokens",
    ),
    "ended with tokens": (lambda c: break_field(c, "ended", "revoked"), "not an ended grant"),
    "a reason with a space": (
        lambda c: c.hset(ALICE.value, mapping={"ended": "re voked", "sealed": ""}),
        "not an ended grant",
    ),
}


@pytest.mark.parametrize("spoil", list(GARBAGE), ids=list(GARBAGE))
def test_an_unusable_grant_is_a_fault_read_as_none_and_a_new_login_replaces_it(
    book: RedisGrants, client: redis.Redis, spoil: str
) -> None:
    version = committed(book, grant())
    assert book.lease(APP, USER, "holder-a", lease_ms=LEASE_MS) == 0
    damage, fault = GARBAGE[spoil]
    damage(client)
    spoiled = snapshot(client, ALICE.value)

    assert book.read(APP, USER) is None
    assert book.grants(APP) == []
    assert not book.begin(APP, USER, "holder-a", version=version)
    assert not book.end(APP, USER, "revoked", expect=version)
    assert book.commit(grant(), expect=version) is None

    assert store_faults(store_of(book)).get(fault, 0) >= 1, store_faults(store_of(book))
    assert snapshot(client, ALICE.value) == spoiled  # a durable record: readers leave it be
    login = grant()
    again = committed(book, login, expect=0)  # an unusable grant counts as none
    assert again > version and book.read(APP, USER) == dataclasses.replace(login, version=again)


SEALED_GARBAGE = {
    "not two tokens": (b"[1, 2, 3]", "sealed tokens malformed"),
    "not json": (b"u-abc", "sealed tokens malformed"),
    "a token with a space": (
        json.dumps(["u a", None, APP_ID, USER]).encode(),
        "sealed not an access token",
    ),
    "a refresh token with a newline": (
        json.dumps(["u-a", "ur-\n", APP_ID, USER]).encode(),
        "sealed not a refresh token",
    ),
    "another user's tokens": (
        json.dumps(["u-bob", "ur-bob", APP_ID, "ou_bob"]).encode(),
        "sealed tokens malformed",
    ),
}


@pytest.mark.parametrize("spoil", list(SEALED_GARBAGE), ids=list(SEALED_GARBAGE))
def test_tokens_sealed_with_the_key_that_are_not_tokens_are_a_fault_and_read_as_none(
    book: RedisGrants, client: redis.Redis, spoil: str
) -> None:
    # Only the book can open them: to Redis's checks the grant is whole, so only a new login
    # (expect=None) replaces it.
    committed(book, grant())
    plain, fault = SEALED_GARBAGE[spoil]
    break_field(client, "sealed", Fernet(KEY).encrypt(plain).decode())

    assert book.read(APP, USER) is None and book.grants(APP) == []

    assert store_faults(store_of(book)) == {fault: 2}
    login = grant()
    again = committed(book, login, expect=None)
    assert book.read(APP, USER) == dataclasses.replace(login, version=again)


def test_an_unusable_grant_is_deleted_by_a_logout(book: RedisGrants, client: redis.Redis) -> None:
    committed(book, grant())
    break_field(client, "ver", "x")

    assert not book.forget(APP, USER)  # there was no usable grant

    assert client.exists(ALICE.value) == 0 and client.smembers(ALICE.index) == set()


def test_a_hash_copied_from_another_user_is_never_served_as_theirs(
    book: RedisGrants, client: redis.Redis
) -> None:
    committed(book, grant("ou_bob"))
    bob = layout.GrantKeys.of(PREFIX, APP, "ou_bob").value
    client.hset(ALICE.value, mapping=cast(Any, client).hgetall(bob))
    client.hset(ALICE.value, "open_id", USER)

    assert book.read(APP, USER) is None
    assert store_faults(store_of(book)) == {"written for another key": 1}


def test_an_index_or_counter_of_another_type_is_replaced_and_versions_still_rise(
    book: RedisGrants, client: redis.Redis
) -> None:
    version = committed(book, grant())
    client.delete(ALICE.index, ALICE.counter)
    client.hset(ALICE.index, "x", "y")
    client.hset(ALICE.counter, "x", "y")

    assert book.grants(APP) == []
    again = committed(book, grant(), expect=version)

    assert again > version and [g.version for g in book.grants(APP)] == [again]
    client.set(ALICE.counter, "not a number")
    assert committed(book, grant(), expect=again) > again


def test_a_user_in_the_index_without_a_grant_leaves_the_index(
    book: RedisGrants, client: redis.Redis
) -> None:
    committed(book, grant())
    client.sadd(ALICE.index, "ou_gone", b"\xff\xfe")

    assert [g.open_id for g in book.grants(APP)] == [USER]

    assert client.smembers(ALICE.index) == {USER.encode(), b"\xff\xfe"}


def test_a_lease_of_another_type_or_without_a_lifetime_is_no_holder_for_ever(
    book: RedisGrants, client: redis.Redis
) -> None:
    client.hset(ALICE.lease, "x", "y")
    assert book.lease(APP, USER, "holder-a", lease_ms=LEASE_MS) == 0
    client.set(ALICE.lease, "someone")  # no PX

    assert 0 < book.lease(APP, USER, "holder-a", lease_ms=LEASE_MS) <= LEASE_MS

    assert 0 < client.pttl(ALICE.lease) <= LEASE_MS


def test_a_grant_the_layout_cannot_keep_is_refused_before_anything_is_written(
    book: RedisGrants, client: redis.Redis
) -> None:
    refused = {
        "an open_id with a space": grant("ou a"),
        "a negative time": grant(expires_at_ms=-1),
        "a token with a newline": grant(access_token="u-a\nb"),
        "no access token": grant(access_token=""),
        "a scope that is not text": grant(scope=(1,)),
    }
    for why, each in refused.items():
        with pytest.raises(ValueError, match="cannot keep this grant"):
            book.commit(each, expect=None)
        assert everything(client) == {}, why
    version = committed(book, grant())
    for stored in (version, version + 1):  # refused before the grant is even looked at
        with pytest.raises(ValueError, match="not a reason"):
            book.end(APP, USER, "a reason with spaces", expect=stored)
    with pytest.raises(ValueError, match="expect must be a version"):
        book.commit(grant(), expect=-1)
    assert book.read(APP, USER) is not None


def test_a_commit_for_an_app_the_store_never_served_is_refused(
    stores: Callable[..., RedisStore],
) -> None:
    book = stores(key=KEY).grants()

    with pytest.raises(ValueError, match="has not served app"):
        book.commit(grant(), expect=0)


# --- concurrency ---------------------------------------------------------------------------------


def test_of_many_processes_committing_over_one_version_exactly_one_wins(
    books: Callable[..., RedisGrants],
) -> None:
    version = committed(books(), grant())
    contenders = [books() for _ in range(8)]
    start = threading.Barrier(len(contenders))
    results: list[int | None] = []

    def race(book: RedisGrants) -> None:
        start.wait(5)
        results.append(book.commit(grant(), expect=version))

    threads = [threading.Thread(target=race, args=(book,)) for book in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    won = [r for r in results if r is not None]
    assert len(results) == 8 and len(won) == 1
    stored = books().read(APP, USER)
    assert stored is not None and stored.version == won[0]

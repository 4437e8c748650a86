"""A SqliteStore's user grants on real files: no token at rest (file, WAL, shared memory), a
wrong key that changes nothing, key rotation, a store without a key, two processes on one
file, and rows that are not grants."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

import actors
from actors.stores import SqliteStore
from actors.stores._grants import KEY_ENV, StoredGrant
from tests.redis_server import serve_commands
from tests.stores.conftest import SPAWN, counting_source
from tests.stores.test_grant_books import APP, grant

KEY = Fernet.generate_key()
LEASE_MS = 5_000


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "tokens.db")


@pytest.fixture
def stores(path: str) -> Iterator[Callable[..., SqliteStore]]:
    """``stores(**options)``: a SqliteStore on the test's file that has served APP."""
    made: list[SqliteStore] = []

    def make(**options: Any) -> SqliteStore:
        store = SqliteStore(path, **options)
        store.serves(APP)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def query(path: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path, timeout=5, isolation_level=None)) as conn:
        return conn.execute(sql, params).fetchall()


def at_rest(path: str) -> bytes:
    """Every byte the store keeps on disk: the file, its WAL and its shared memory."""
    parts = [Path(path + suffix) for suffix in ("", "-wal", "-shm")]
    return b"".join(part.read_bytes() for part in parts if part.exists())


def tokens(found: StoredGrant | None) -> tuple[str, str | None]:
    assert found is not None
    return found.access_token, found.refresh_token


# --- encryption at rest --------------------------------------------------------------------------


def test_no_access_or_refresh_token_is_in_the_file_its_wal_or_its_shared_memory(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores(key=KEY)
    book = store.grants()
    written = []
    for user in ("ou_alice", "ou_bob", "ou_carol"):
        first = grant(user)
        version = book.commit(first, expect=0)
        rotated = grant(user)
        assert book.commit(rotated, expect=version) is not None
        written += [first, rotated]
    ended = book.read(APP, "ou_carol")
    assert ended is not None and book.end(APP, "ou_carol", "revoked", expect=ended.version)
    assert Path(path + "-wal").exists()

    for moment in ("open", "closed"):
        raw = at_rest(path)
        assert b"ou_alice" in raw and b"docs:read" in raw  # the clear columns are in these bytes
        for each in written:
            assert each.access_token.encode() not in raw, moment
            assert each.refresh_token is not None and each.refresh_token.encode() not in raw
        store.close()  # checkpoints the WAL into the file


def test_a_wrong_key_raises_store_key_error_naming_the_store_and_changes_nothing(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    written = grant()
    version = stores(key=KEY).grants().commit(written, expect=0)
    assert version is not None
    row = query(path, "SELECT * FROM grants")
    book = stores(key=Fernet.generate_key()).grants()
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) == 0

    for attempt in (
        lambda: book.read(APP, "ou_alice"),
        lambda: book.begin(APP, "ou_alice", "holder-a", version=version),
        lambda: book.commit(grant(), expect=version),
        lambda: book.end(APP, "ou_alice", "revoked", expect=version),
    ):
        with pytest.raises(actors.StoreKeyError, match=f"SqliteStore {path}") as caught:
            attempt()
        assert written.access_token not in str(caught.value)
    assert book.grants(APP) == []  # listed as absent: the other users' grants still list

    assert query(path, "SELECT * FROM grants") == row
    assert tokens(stores(key=KEY).grants().read(APP, "ou_alice")) == tokens(written)


def test_a_logout_or_a_new_login_replaces_a_grant_no_key_of_the_store_opens(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    stores(key=KEY).grants().commit(grant(), expect=0)
    book = stores(key=Fernet.generate_key()).grants()
    fresh = grant()
    assert book.commit(fresh, expect=None) is not None  # a new login
    assert tokens(book.read(APP, "ou_alice")) == tokens(fresh)
    stranger = stores(key=KEY).grants()
    assert stranger.forget(APP, "ou_alice") is True  # a logout, whoever sealed it
    assert query(path, "SELECT * FROM grants") == []


def test_keys_rotate_the_new_one_first_reads_old_grants_and_a_commit_reseals_them(
    stores: Callable[..., SqliteStore],
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    first = grant()
    version = stores(key=old).grants().commit(first, expect=0)
    both = stores(key=[new.decode(), old]).grants()

    assert tokens(both.read(APP, "ou_alice")) == tokens(first)
    rotated = grant()
    assert both.commit(rotated, expect=version) is not None

    assert tokens(stores(key=new).grants().read(APP, "ou_alice")) == tokens(rotated)
    with pytest.raises(actors.StoreKeyError):
        stores(key=old).grants().read(APP, "ou_alice")


def test_a_store_without_a_key_says_how_to_make_one_and_still_serves_tenant_tokens(
    stores: Callable[..., SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    store = stores()
    book = store.grants()

    assert book is store.grants() and book.read(APP, "ou_alice") is None
    with pytest.raises(ValueError, match="python -m actors keygen"):
        book.check_writable()
    with pytest.raises(ValueError, match="python -m actors keygen"):
        book.commit(grant(), expect=0)
    tenant = actors.TokenRequest(app=APP, kind=actors.TokenKind.TENANT)
    shared = store.wrap(counting_source(), actors.RefreshPolicy())
    assert shared.fetch(tenant).token == "t-000001-shared-token"


def test_the_key_may_come_from_the_environment_and_a_reopened_store_keeps_its_key(
    stores: Callable[..., SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    from_env = stores().grants()
    from_env.check_writable()
    written = grant()
    assert from_env.commit(written, expect=0) is not None
    monkeypatch.delenv(KEY_ENV)

    reopened = stores(key=KEY).reopened()
    try:
        reopened.serves(APP)
        assert tokens(reopened.grants().read(APP, "ou_alice")) == tokens(written)
    finally:
        reopened.close()


def test_a_grant_the_store_could_not_read_back_is_refused_before_it_is_written(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    book = stores(key=KEY).grants()
    for bad in (
        StoredGrant(**{**_fields(grant()), "access_token": "u-a b\r\nX-Injected: 1"}),
        StoredGrant(**{**_fields(grant()), "refresh_token": ""}),
        StoredGrant(**{**_fields(grant()), "open_id": "ou_" + "x" * 300}),
        StoredGrant(**{**_fields(grant()), "expires_at_ms": 1.5}),
    ):
        with pytest.raises(ValueError, match="cannot keep this grant") as caught:
            book.commit(bad, expect=0)
        assert bad.access_token not in str(caught.value)
    assert book.grants(APP) == [] and query(path, "SELECT count(*) FROM grants") == [(0,)]


def _fields(found: StoredGrant) -> dict[str, Any]:
    return {name: getattr(found, name) for name in StoredGrant.__dataclass_fields__}


# --- rows that are not grants --------------------------------------------------------------------

SEALED_JUNK = Fernet(KEY).encrypt(b"not the tokens")
SEALED_BAD_TOKEN = Fernet(KEY).encrypt(
    json.dumps(["u-a b\r\n", None, APP.app_id, "ou_alice"]).encode()
)
# Another user's tokens, sealed with the right key: moved into this row, they must not open.
SEALED_BOBS = Fernet(KEY).encrypt(json.dumps(["u-bob", "ur-bob", APP.app_id, "ou_bob"]).encode())
BAD_ROWS: dict[str, tuple[str, tuple[object, ...], str]] = {
    "a scope that is not JSON": ("UPDATE grants SET scope = 'docs'", (), "not a scope"),
    "a scope of numbers": ("UPDATE grants SET scope = '[1, 2]'", (), "not a scope"),
    "a huge scope": (
        "UPDATE grants SET scope = '[\"' || hex(zeroblob(100000)) || '\"]'",
        (),
        "too large",
    ),
    "a version in words": ("UPDATE grants SET version = 'seven'", (), "no version"),
    "no version": ("UPDATE grants SET version = NULL", (), "no version"),
    "a fractional time": ("UPDATE grants SET expires_at_ms = 1.5", (), "not a time"),
    "a rotation in words": ("UPDATE grants SET rotating = 'yes'", (), "not a rotation"),
    "another app's id": (
        "UPDATE grants SET app_id = 'cli_someone_else'",
        (),
        "written for another key",
    ),
    "bytes that were never sealed": (
        "UPDATE grants SET sealed = x'00ff'",
        (),
        "no sealed tokens",
    ),
    "sealed tokens as text": ("UPDATE grants SET sealed = 'abc'", (), "no sealed tokens"),
    "a megabyte of sealed tokens": (
        "UPDATE grants SET sealed = zeroblob(1000000)",
        (),
        "too large",
    ),
    "sealed junk": ("UPDATE grants SET sealed = ?", (SEALED_JUNK,), "sealed tokens malformed"),
    "another user's sealed tokens": (
        "UPDATE grants SET sealed = ?",
        (SEALED_BOBS,),
        "sealed tokens malformed",
    ),
    "a sealed header injection": (
        "UPDATE grants SET sealed = ?",
        (SEALED_BAD_TOKEN,),
        "not an access token",
    ),
    "a reason with a newline": (
        "UPDATE grants SET ended = 'revoked' || char(10) || 'x', sealed = NULL",
        (),
        "not a reason",
    ),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_a_row_that_is_not_a_grant_is_a_fault_read_as_none_and_overwritten(
    name: str, path: str, stores: Callable[..., SqliteStore]
) -> None:
    seeding = stores(key=KEY).grants()
    versions = [seeding.commit(grant(), expect=0)]
    versions.append(seeding.commit(grant(), expect=versions[-1]))
    sql, params, fault = BAD_ROWS[name]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(sql, params)
    store = stores(key=KEY)
    book = store.grants()

    assert book.read(APP, "ou_alice") is None
    assert book.grants(APP) == []
    assert set(store.faults.counts()) == {fault}

    fresh = grant()
    version = book.commit(fresh, expect=0)

    assert version is not None and version > max(v or 0 for v in versions)
    assert tokens(stores(key=KEY).grants().read(APP, "ou_alice")) == tokens(fresh)


def test_a_grant_lease_row_no_holder_could_have_written_is_taken_over(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores(key=KEY)
    book = store.grants()
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) == 0
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("UPDATE leases SET until_ms = until_ms + 86400000")

    assert book.lease(APP, "ou_alice", "holder-b", lease_ms=LEASE_MS) == 0
    assert store.faults.counts() == {"lease out of bounds": 1}


# --- two processes -------------------------------------------------------------------------------


class GrantsChild:
    """A remote-controlled process with a SqliteStore of its own on the test's file."""

    def __init__(self, path: str, key: bytes) -> None:
        self.store = SqliteStore(path, key=key)
        self.store.serves(APP)
        self.book = self.store.grants()

    def commit(self, written: StoredGrant, expect: int | None) -> int | None:
        return self.book.commit(written, expect=expect)

    def read(self, user: str) -> StoredGrant | None:
        return self.book.read(APP, user)

    def lease(self, user: str, lease_id: str, lease_ms: int) -> int:
        return self.book.lease(APP, user, lease_id, lease_ms=lease_ms)

    def release(self, user: str, lease_id: str) -> None:
        self.book.release(APP, user, lease_id)

    def stop(self) -> None:
        self.store.close()


def grants_child(conn: Connection, path: str, key: bytes) -> None:
    serve_commands(conn, GrantsChild(path, key))


@pytest.fixture
def other_process(path: str) -> Iterator[Callable[..., Any]]:
    """``call(name, *args)``: a GrantsChild's method, run in a spawned process."""
    parent, child = SPAWN.Pipe()
    process = SPAWN.Process(target=grants_child, args=(child, path, KEY), daemon=True)
    process.start()
    child.close()

    def call(name: str, *args: Any) -> Any:
        parent.send((name, args))
        if not parent.poll(30):
            raise AssertionError(f"the other process did not answer {name} within 30 s")
        status, value = parent.recv()
        assert status == "ok", value
        return value

    yield call
    with contextlib.suppress(OSError):
        parent.send(("exit", ()))
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join(5)
    assert os.path.exists(path)


def test_two_processes_see_each_others_commits_and_leases(
    stores: Callable[..., SqliteStore], other_process: Callable[..., Any]
) -> None:
    book = stores(key=KEY).grants()
    first = grant()
    version = book.commit(first, expect=0)

    assert tokens(other_process("read", "ou_alice")) == tokens(first)
    rotated = grant()
    theirs = other_process("commit", rotated, version)
    assert theirs is not None and theirs > (version or 0)
    assert tokens(book.read(APP, "ou_alice")) == tokens(rotated)
    assert book.commit(grant(), expect=version) is None  # theirs came first

    assert other_process("lease", "ou_alice", "holder-b", LEASE_MS) == 0
    assert 0 < book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) <= LEASE_MS
    assert not book.begin(APP, "ou_alice", "holder-a", version=theirs)
    other_process("release", "ou_alice", "holder-b")
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) == 0
    assert other_process("lease", "ou_alice", "holder-b", LEASE_MS) > 0

"""One behaviour suite for every GrantBook (``actors/stores/_grants.py``): the in-memory book,
a SqliteStore's and a RedisStore's (a real redis-server). Each test states what the user-token
rotation relies on: compare-and-set commits, versions never reused, the user's lease, the
record of a rotation in progress, ended grants and logout."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

import actors
from actors.stores import RedisStore, SqliteStore, Store
from actors.stores._grants import GrantBook, MemoryGrants, StoredGrant
from actors.stores._shared import SharedStore
from tests.conftest import APP_ID, SECRET
from tests.stores.conftest import wait_for

APP = actors.AppConfig(APP_ID, SECRET, base_url="http://127.0.0.1:9")
# The same app_id with another secret: other credentials, so other grants.
OTHER_SECRET = actors.AppConfig(APP_ID, "another-secret-value", base_url=APP.base_url)
OTHER_APP = actors.AppConfig("cli_other_app", "other-app-secret-value", base_url=APP.base_url)
KEY = Fernet.generate_key()
LEASE_MS = 5_000


@pytest.fixture(params=["memory", "sqlite", "redis"])
def book(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GrantBook]:
    store: SharedStore | None = None
    if request.param == "memory":
        yield MemoryGrants()
        return
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "grants.db", key=KEY)
    else:
        if RedisStore.grants is Store.grants:
            pytest.skip("RedisStore keeps no user grants yet")
        make: Callable[..., RedisStore] = request.getfixturevalue("stores")
        store = make(key=KEY)
    # A commit names its app by app_id only: a shared book finds the configuration among the
    # apps its store serves, as a system's store does (one configuration per app_id).
    for app in (APP, OTHER_APP):
        store.serves(app)
    found = store.grants()
    assert found is not None
    try:
        yield found
    finally:
        store.close()


def durable(book: GrantBook) -> None:
    if isinstance(book, MemoryGrants):
        pytest.skip("the in-memory book serves one system: its actor is the user's lease")


def grant(
    user: str = "ou_alice", *, app: actors.AppConfig = APP, scope: tuple[str, ...] = ("docs:read",)
) -> StoredGrant:
    """A fresh grant with tokens of its own."""
    return StoredGrant(
        app_id=app.app_id,
        open_id=user,
        access_token=f"u-{secrets.token_hex(8)}",
        refresh_token=f"ur-{secrets.token_hex(8)}",
        expires_at_ms=1_700_000_000_000 + 7_200_000,
        refresh_expires_at_ms=1_700_000_000_000 + 604_800_000,
        scope=scope,
        granted_at_ms=1_700_000_000_000,
    )


def tokens(found: StoredGrant | None) -> tuple[str, str | None]:
    assert found is not None
    return found.access_token, found.refresh_token


def test_a_user_without_a_grant_has_nothing_to_read_begin_end_or_forget(book: GrantBook) -> None:
    assert book.read(APP, "ou_nobody") is None
    assert book.grants(APP) == []
    assert book.lease(APP, "ou_nobody", "holder-a", lease_ms=LEASE_MS) == 0
    assert not book.begin(APP, "ou_nobody", "holder-a", version=0)
    assert not book.end(APP, "ou_nobody", "revoked", expect=0)
    assert not book.forget(APP, "ou_nobody")


def test_a_first_commit_expects_no_grant_and_reads_back_whole(book: GrantBook) -> None:
    written = grant(scope=("docs:read", "offline_access"))

    version = book.commit(written, expect=0)

    assert version is not None and version > 0
    assert book.read(APP, "ou_alice") == dataclasses.replace(written, version=version)
    assert tokens(book.read(APP, "ou_alice")) == (written.access_token, written.refresh_token)
    assert book.commit(grant(), expect=0) is None  # a grant is stored now


def test_a_commit_with_a_stale_version_is_refused_and_changes_nothing(book: GrantBook) -> None:
    first = book.commit(grant(), expect=0)
    assert first is not None
    second_grant = grant()
    second = book.commit(second_grant, expect=first)
    assert second is not None

    assert book.commit(grant(), expect=first) is None

    stored = book.read(APP, "ou_alice")
    assert stored is not None and stored.version == second
    assert tokens(stored) == (second_grant.access_token, second_grant.refresh_token)


def test_every_write_of_a_grant_has_a_higher_version(book: GrantBook) -> None:
    versions = [0]
    for _ in range(4):
        version = book.commit(grant(), expect=versions[-1])
        assert version is not None
        versions.append(version)
    assert book.end(APP, "ou_alice", "revoked", expect=versions[-1])
    ended = book.read(APP, "ou_alice")
    assert ended is not None
    versions.append(ended.version)

    assert versions == sorted(set(versions))  # strictly increasing: never one twice


def test_a_commit_expecting_none_overwrites_whatever_is_stored(book: GrantBook) -> None:
    first = book.commit(grant(), expect=0)
    assert first is not None and book.end(APP, "ou_alice", "revoked", expect=first)
    login = grant()

    version = book.commit(login, expect=None)

    stored = book.read(APP, "ou_alice")
    assert stored is not None and stored.version == version and stored.ended is None
    assert tokens(stored) == (login.access_token, login.refresh_token)


def test_the_lease_is_exclusive_and_tells_the_others_how_long_it_has_left(
    book: GrantBook,
) -> None:
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) == 0

    left = book.lease(APP, "ou_alice", "holder-b", lease_ms=LEASE_MS)

    assert 0 < left <= LEASE_MS
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) == 0  # its holder's still
    assert book.lease(APP, "ou_bob", "holder-b", lease_ms=LEASE_MS) == 0  # one lease per user


def test_only_the_holder_releases_the_lease(book: GrantBook) -> None:
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) == 0

    book.release(APP, "ou_alice", "holder-b")  # not its lease: nothing happens
    assert book.lease(APP, "ou_alice", "holder-b", lease_ms=LEASE_MS) > 0
    book.release(APP, "ou_alice", "holder-a")

    assert book.lease(APP, "ou_alice", "holder-b", lease_ms=LEASE_MS) == 0


def test_a_lease_lapses_after_its_lease_ms_and_is_taken_over(book: GrantBook) -> None:
    durable(book)
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=50) == 0

    wait_for(lambda: book.lease(APP, "ou_alice", "holder-b", lease_ms=LEASE_MS) == 0, 5, "a lapse")

    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) > 0


def test_a_rotation_begins_only_for_the_holder_and_the_stored_version(book: GrantBook) -> None:
    version = book.commit(grant(), expect=0)
    assert version is not None

    assert not book.begin(APP, "ou_alice", "holder-a", version=version)  # no lease
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) == 0
    assert not book.begin(APP, "ou_alice", "holder-b", version=version)  # not the holder
    assert not book.begin(APP, "ou_alice", "holder-a", version=version - 1)  # stale
    untouched = book.read(APP, "ou_alice")
    assert untouched is not None and untouched.rotating is None

    assert book.begin(APP, "ou_alice", "holder-a", version=version)

    stored = book.read(APP, "ou_alice")
    assert stored is not None and stored.rotating == version and stored.version == version


def test_a_commit_clears_the_rotation_in_progress(book: GrantBook) -> None:
    version = book.commit(grant(), expect=0)
    assert version is not None
    assert book.lease(APP, "ou_alice", "holder-a", lease_ms=LEASE_MS) == 0
    assert book.begin(APP, "ou_alice", "holder-a", version=version)

    rotated = book.commit(grant(), expect=version)

    stored = book.read(APP, "ou_alice")
    assert stored is not None and stored.version == rotated and stored.rotating is None


def test_ending_a_grant_erases_its_tokens_and_keeps_the_reason(book: GrantBook) -> None:
    version = book.commit(grant(), expect=0)
    assert version is not None

    assert not book.end(APP, "ou_alice", "revoked", expect=version + 1)  # not the stored one
    assert book.end(APP, "ou_alice", "revoked", expect=version)

    stored = book.read(APP, "ou_alice")
    assert stored is not None and stored.ended == "revoked" and stored.rotating is None
    assert tokens(stored) == ("", None)
    assert stored.version > version and stored.scope == ("docs:read",)
    assert book.grants(APP) == []  # not live


def test_grants_lists_the_live_grants_of_that_app_only(book: GrantBook) -> None:
    alice, bob, carol = grant("ou_alice"), grant("ou_bob"), grant("ou_carol")
    for each in (alice, bob, carol, grant("ou_dave", app=OTHER_APP)):
        assert book.commit(each, expect=0) is not None
    ended = book.read(APP, "ou_carol")
    assert ended is not None and book.end(APP, "ou_carol", "expired", expect=ended.version)

    listed = book.grants(APP)

    assert sorted(g.open_id for g in listed) == ["ou_alice", "ou_bob"]
    assert {tokens(g) for g in listed} == {tokens(alice), tokens(bob)}
    assert [g.open_id for g in book.grants(OTHER_APP)] == ["ou_dave"]


def test_the_same_app_id_with_another_secret_never_sees_the_grants(book: GrantBook) -> None:
    durable(book)  # one system has one configuration per app_id
    assert book.commit(grant("ou_alice"), expect=0) is not None

    assert book.grants(OTHER_SECRET) == []
    assert book.read(OTHER_SECRET, "ou_alice") is None
    assert book.read(APP, "ou_alice") is not None


def test_forgetting_deletes_the_grant_and_a_new_login_commits_with_a_new_version(
    book: GrantBook,
) -> None:
    first = book.commit(grant(), expect=0)
    assert first is not None

    assert book.forget(APP, "ou_alice")

    assert book.read(APP, "ou_alice") is None and book.grants(APP) == []
    assert not book.forget(APP, "ou_alice")
    again = book.commit(grant(), expect=0)
    assert again is not None and again > first
    # A holder that read the forgotten grant cannot overwrite the new login's.
    assert book.commit(grant(), expect=first) is None

"""The embedded store on real SQLite files (no mocks): the file, rows, lease, CAS, tickets,
notices, unusable rows, a locked or foreign file, reopening, health."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.fernet import Fernet
from loguru import logger

import actors
import actors.stores
from actors.stores import SqliteStore
from actors.stores import _base as base
from actors.stores import _layout as layout
from actors.stores import _sqlite_schema as schema
from actors.testing import FunctionSource
from tests.conftest import APP_ID, MARKET_ID, MARKET_SECRET, SECRET, our_threads
from tests.stores.conftest import counting_source, wait_for

APP = actors.AppConfig(APP_ID, SECRET, base_url="http://127.0.0.1:9")
MARKET = actors.AppConfig(
    MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=APP.base_url
)
TENANT = actors.TokenKind.TENANT
KEYS = layout.Keys.of("", APP, TENANT, None)
TICKET_KEY = layout.ticket_key("", MARKET)
HOUR_MS = 3_600_000


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "tokens.db")


@pytest.fixture
def stores(path: str) -> Iterator[Callable[..., SqliteStore]]:
    """``stores(**options)``: a SqliteStore on the test's file."""
    made: list[SqliteStore] = []

    def make(**options: Any) -> SqliteStore:
        made.append(SqliteStore(options.pop("path", path), **options))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """Every WARNING line of the library."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="WARNING")
    logger.enable("actors")
    yield lines
    logger.disable("actors")
    logger.remove(sink)


@contextlib.contextmanager
def connect(path: str) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own, as another program on the host would open the file."""
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def query(path: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def lease_holders(path: str) -> list[str]:
    """The holders of the leases in the file (none before the store has made its tables)."""
    try:
        return [holder for (holder,) in query(path, "SELECT holder FROM leases")]
    except sqlite3.OperationalError:
        return []


def execute(path: str, sql: str, *params: object) -> None:
    with connect(path) as conn:
        conn.execute(sql, params)


def request(**fields: Any) -> actors.TokenRequest:
    fields.setdefault("app", APP)
    fields.setdefault("kind", TENANT)
    return actors.TokenRequest(**fields)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def holds(system: actors.TokenSystem, token: str) -> bool:
    held: str = system.proxy.get_token().get(timeout=5)
    return held == token


def invalidated(system: actors.TokenSystem) -> bool:
    return system.metrics().invalidations == 1


def listening(store: SqliteStore) -> bool:
    notices = cast(Any, store)._notices
    return notices is not None and bool(notices.listening.wait(5))


def never_called() -> FunctionSource:
    return FunctionSource(lambda _r: AssertionError("the stored value should have been served"))


# --- the file ------------------------------------------------------------------------------------


def test_the_file_is_created_readable_by_its_owner_only_with_its_wal_and_marked_as_ours(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    old = os.umask(0o002)  # a permissive umask changes nothing
    try:
        store = stores()
        shared = store.wrap(counting_source(), actors.RefreshPolicy())
        shared.fetch(request())
    finally:
        os.umask(old)

    files = [path, path + "-wal", path + "-shm"]
    assert all(os.path.exists(name) for name in files)  # WAL: the store's connection is open
    assert {stat.S_IMODE(os.stat(name).st_mode) for name in files} == {0o600}
    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "PRAGMA application_id") == [(schema.APPLICATION_ID,)]
    assert query(path, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
    tables = {name for (name,) in query(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"tokens", "leases", "tickets", "notices"} <= tables


def test_stores_making_a_new_file_at_once_all_find_it_theirs(
    stores: Callable[..., SqliteStore], warnings: list[str]
) -> None:
    # Each with connections of its own, as processes have. Eight writers at once on a loaded
    # machine can outwait the default busy_timeout (then a store fetches locally, by design);
    # this test is about the file's creation, so its writers may wait.
    made = [stores(busy_timeout=10.0) for _ in range(8)]
    barrier = threading.Barrier(len(made))

    def share(store: SqliteStore) -> bool:
        barrier.wait(5)
        return store.put_ticket(MARKET, "ticket-1")

    for _ in range(5):  # a few rounds: the race, if any, is narrow
        with ThreadPoolExecutor(len(made)) as pool:
            assert list(pool.map(share, made)) == [True] * len(made)
    assert warnings == []


def test_connections_opening_a_new_file_together_all_put_it_in_wal_mode(tmp_path: Path) -> None:
    # The switch to WAL is refused at once ("database is locked", no busy timeout) while
    # another connection reads the file: each opener must still end up with the file in WAL.
    def prepare(path: Path, barrier: threading.Barrier, _: int) -> str:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            barrier.wait(5)
            return schema.prepare(conn)
        finally:
            conn.close()

    for round_ in range(10):
        path = tmp_path / f"new-{round_}.db"
        path.touch()
        opening = partial(prepare, path, threading.Barrier(8))
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(opening, range(8))) == ["wal"] * 8


def test_the_token_row_carries_its_owner_version_and_an_expiry_counted_from_before_the_request(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    source = FunctionSource.constant("t-shared-value-0001", 600.0)
    shared = stores().wrap(source, actors.RefreshPolicy())
    before = now_ms()

    grant = shared.fetch(request())

    after = now_ms()
    assert grant == actors.Grant("t-shared-value-0001", 600.0)
    [(token, owner, version, expires_ms)] = query(
        path, "SELECT token, owner, version, expires_ms FROM tokens WHERE key = ?", KEYS.value
    )
    assert (token, owner, version) == ("t-shared-value-0001", KEYS.owner, 1)
    assert before + 599_000 <= expires_ms <= after + 600_000
    assert query(path, "SELECT * FROM leases") == []  # released
    # Another process (another store) is served from the file, with what is left of it.
    again = stores().wrap(never_called(), actors.RefreshPolicy()).fetch(request())
    assert again.token == "t-shared-value-0001" and 590 < again.expire <= 600
    assert len(source.requests) == 1


def test_keys_name_the_app_its_domain_and_a_digest_of_its_credentials_never_the_secret(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores()
    shared = store.wrap(counting_source(), actors.RefreshPolicy())
    token = shared.fetch(request()).token
    shared.fetch(request(app=MARKET, kind=actors.TokenKind.APP, app_ticket="ticket-1"))
    shared.fetch(request(app=MARKET, tenant_key="tk{odd}:key", app_token="a-app-token"))
    shared.fetch(request(cause="invalidate", replaces=token))
    assert store.put_ticket(MARKET, "ticket-1")
    store.close()

    mine = f"{{app:{APP_ID}:127.0.0.1%3A9:{base.credentials_digest(APP)[:16]}}}"
    theirs = f"{{app:{MARKET_ID}:127.0.0.1%3A9:{base.credentials_digest(MARKET)[:16]}}}"
    keys = sorted(key for (key,) in query(path, "SELECT key FROM tokens"))
    assert keys == sorted(
        [
            f"{mine}:tenant:-:tenant",
            f"{theirs}:tenant:-:app",
            f"{theirs}:tenant:tk%7Bodd%7D%3Akey:tenant",
        ]
    )
    assert query(path, "SELECT key FROM tickets") == [(f"{theirs}:ticket",)]
    # Neither secret anywhere in the file (the WAL is checkpointed into it on close).
    raw = Path(path).read_bytes()
    assert SECRET.encode() not in raw and MARKET_SECRET.encode() not in raw


def test_the_same_app_id_on_another_domain_or_with_another_secret_is_another_key() -> None:
    lark = actors.AppConfig(APP_ID, SECRET, base_url=actors.LARK)
    rotated = actors.AppConfig(APP_ID, SECRET + "-rotated", base_url=APP.base_url)
    names = {layout.Keys.of("", app, TENANT, None).value for app in (APP, lark, rotated)}
    assert len(names) == 3


# --- lease and compare-and-set ------------------------------------------------------------------


OPTIONS: dict[str, Any] = {"lease_ms": 5_000, "replaces": "", "min_ms": 0, "since": -1}


def test_the_lease_is_exclusive_and_only_its_holder_releases_it(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    first_store, second_store = stores(), stores()

    first = first_store.acquire(KEYS, "holder-a", **OPTIONS)
    second = second_store.acquire(KEYS, "holder-b", **OPTIONS)

    assert first.kind == "lease" and second.kind == "wait"
    assert 0 < second.pttl_ms <= 5_000
    second_store.release(KEYS, "holder-b")  # not its lease: nothing happens
    assert query(path, "SELECT holder FROM leases") == [("holder-a",)]
    first_store.release(KEYS, "holder-a")
    assert query(path, "SELECT holder FROM leases") == []
    assert second_store.acquire(KEYS, "holder-b", **OPTIONS).kind == "lease"


def test_a_lapsed_lease_is_taken_over_and_a_renewed_one_is_not(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores()
    assert store.acquire(KEYS, "holder-a", **{**OPTIONS, "lease_ms": 1}).kind == "lease"
    wait_for(lambda: store.acquire(KEYS, "holder-b", **OPTIONS).kind == "lease", 2, "a lapse")

    store.renew([(KEYS, "holder-b"), (KEYS, "holder-a")])  # only the holder's id renews

    [(holder, until_ms)] = query(path, "SELECT holder, until_ms FROM leases")
    assert holder == "holder-b" and until_ms - now_ms() <= store.lease_ms
    assert store.acquire(KEYS, "holder-c", **OPTIONS).kind == "wait"


def test_writes_are_ordered_by_the_keys_version_and_a_late_writer_never_extends_a_token(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores()

    assert store.write(KEYS, "t-long", 100_000, 0)[0]  # version 1
    # A writer that took its lease before the stored value was written lost the race, however
    # long-lived its token: it saw version 0, the value is version 1.
    written, kept, pttl = store.write(KEYS, "t-stale-writer", 200_000, 0)
    assert (written, kept) == (False, "t-long") and 90_000 < pttl <= 100_000
    # A writer that saw the stored value fetched to replace it: it wins.
    assert store.write(KEYS, "t-newer", 50_000, 1)[0]
    # The same token is rewritten (a new version) with a shorter lifetime, never a longer one.
    assert store.write(KEYS, "t-newer", 40_000, 0)[0]
    written, kept, pttl = store.write(KEYS, "t-newer", 900_000, 0)
    assert written and kept == "t-newer" and 30_000 < pttl <= 40_000
    [(version, expires_ms)] = query(path, "SELECT version, expires_ms FROM tokens")
    assert version == 4 and 30_000 < expires_ms - now_ms() <= 40_000


def test_a_value_that_is_the_replaced_token_or_within_the_margin_is_not_served(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    policy = actors.RefreshPolicy(safety_margin=100.0, prewarm_lead=200.0)
    source = counting_source()
    shared = stores().wrap(source, policy)
    store = stores()
    store.write(KEYS, "t-held-by-caller", 7_200_000, 0)

    # A prewarm replacing the stored token goes upstream (under the lease).
    grant = shared.fetch(request(cause="prewarm", replaces="t-held-by-caller"))
    assert grant.token == "t-000001-shared-token" and len(source.requests) == 1

    assert store.write(KEYS, "t-nearly-gone", 100_300, 2)[0]
    assert shared.fetch(request()).token == "t-000002-shared-token"
    assert store.faults.counts() == {}  # nearly gone is not unusable: nothing to report


# --- one upstream request ------------------------------------------------------------------------


def test_many_threads_of_many_systems_on_one_file_make_one_upstream_request(
    stores: Callable[..., SqliteStore], systems: list[actors.TokenSystem]
) -> None:
    source = counting_source(latency=0.2)  # slow enough for every system to find the lease taken
    for _ in range(4):
        systems.append(actors.TokenSystem.start(APP, store=stores(), source=source))
    barrier = threading.Barrier(32)

    def get(index: int) -> str:
        barrier.wait(5)
        token: str = systems[index % 4].proxy.get_token().get(timeout=10)
        return token

    with ThreadPoolExecutor(32) as pool:
        tokens = set(pool.map(get, range(32)))

    assert tokens == {"t-000001-shared-token"}
    assert len(source.requests) == 1


def test_a_live_holder_keeps_its_lease_however_long_its_fetch_takes(
    path: str, stores: Callable[..., SqliteStore], systems: list[actors.TokenSystem]
) -> None:
    slow = counting_source(latency=3 * 0.3)
    never = FunctionSource(lambda _r: AssertionError("the holder is alive: wait for it"))
    systems.append(actors.TokenSystem.start(APP, store=stores(lease=0.3), source=slow))
    systems.append(actors.TokenSystem.start(APP, store=stores(lease=0.3), source=never))

    first = systems[0].proxy.get_token()
    wait_for(lambda: lease_holders(path), 5, "the holder's lease")
    second = systems[1].proxy.get_token()

    assert second.get(timeout=10) == first.get(timeout=10) == "t-000001-shared-token"
    assert never.requests == []


# --- invalidation --------------------------------------------------------------------------------


def test_an_invalidation_empties_the_row_posts_one_notice_and_every_system_drops_the_token(
    path: str, stores: Callable[..., SqliteStore], systems: list[actors.TokenSystem]
) -> None:
    source = counting_source()
    made = [stores() for _ in range(3)]
    systems.extend(actors.TokenSystem.start(APP, store=store, source=source) for store in made)
    assert all(listening(store) for store in made)
    assert {s.proxy.get_token().get(timeout=5) for s in systems} == {"t-000001-shared-token"}

    assert systems[0].proxy.invalidate("t-000001-shared-token").get(timeout=5)

    for system in systems:
        wait_for(partial(holds, system, "t-000002-shared-token"), 1.0, "the new token everywhere")
    assert len(source.requests) == 2
    notices = [json.loads(raw) for (raw,) in query(path, "SELECT notice FROM notices")]
    # Posted once, with the token's digest only.
    assert [n["digest"] for n in notices] == [base.token_digest("t-000001-shared-token")]
    assert "t-000001" not in json.dumps(notices)


def test_after_a_notice_the_others_take_the_fresh_value_even_when_it_is_the_same_token(
    stores: Callable[..., SqliteStore], systems: list[actors.TokenSystem]
) -> None:
    source = FunctionSource.constant("t-same-token-again-0", 7200.0)
    made = [stores() for _ in range(3)]
    systems.extend(actors.TokenSystem.start(APP, store=store, source=source) for store in made)
    assert all(listening(store) for store in made)
    assert {s.proxy.get_token().get(timeout=5) for s in systems} == {"t-same-token-again-0"}

    assert systems[0].proxy.invalidate("t-same-token-again-0").get(timeout=5)

    for system in systems[1:]:
        wait_for(partial(invalidated, system), 2, "the notice")
        system.settle()
    assert {s.proxy.get_token().get(timeout=5) for s in systems} == {"t-same-token-again-0"}
    assert len(source.requests) == 2  # the first fetch and the invalidating process's


def test_old_notices_are_pruned_and_their_number_is_bounded(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores()
    shared = store.wrap(counting_source(), actors.RefreshPolicy())
    shared.fetch(request())
    old = now_ms() - schema.NOTICE_TTL_MS - 1
    with connect(path) as conn:
        conn.executemany(
            "INSERT INTO notices (digest, at_ms, notice) VALUES (?, ?, ?)",
            [("0" * 64, old, "{}")] * 10 + [("1" * 64, now_ms(), "{}")] * (schema.NOTICE_MAX + 10),
        )

    shared.fetch(request(cause="invalidate", replaces="t-000001-shared-token"))

    [(count, oldest)] = query(path, "SELECT count(*), min(at_ms) FROM notices")
    assert count <= schema.NOTICE_MAX and oldest > old


def test_a_listener_skips_malformed_notices_and_hears_the_next_one(
    path: str, stores: Callable[..., SqliteStore], systems: list[actors.TokenSystem]
) -> None:
    store = stores()
    systems.append(actors.TokenSystem.start(APP, store=store, source=counting_source()))
    assert listening(store)
    held = systems[0].proxy.get_token().get(timeout=5)
    good = json.dumps({"v": 2, "digest": base.token_digest(held), "origin": "other", "ver": 1})
    with connect(path) as conn:
        for bad in (b"\xff\xfe", "[]", "x" * 10_000, 12, None, '{"digest": "1e400"}'):
            conn.execute("INSERT INTO notices (digest, at_ms, notice) VALUES ('', 0, ?)", (bad,))
        conn.execute(
            "INSERT INTO notices (digest, at_ms, notice) VALUES ('', ?, ?)", (now_ms(), good)
        )

    wait_for(lambda: not holds(systems[0], held), 2, "the token dropped")


# --- app_tickets -------------------------------------------------------------------------------


def test_a_ticket_is_shared_between_stores_and_the_newest_is_kept(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    first, second = stores(), stores()
    hour = 3600.0

    assert first.put_ticket(MARKET, "ticket-newer", made_at=time.time() - hour)
    assert not second.put_ticket(MARKET, "ticket-older", made_at=time.time() - 2 * hour)
    assert not second.put_ticket(MARKET, "ticket-unknown-age")  # never over a dated one
    assert first.get_ticket(MARKET) == second.get_ticket(MARKET) == "ticket-newer"
    assert second.put_ticket(MARKET, "ticket-newest", made_at=time.time())
    assert first.get_ticket(MARKET) == "ticket-newest"
    [(owner, made_at_ms, expires_ms)] = query(
        path, "SELECT owner, made_at_ms, expires_ms FROM tickets"
    )
    assert owner == layout.owner(TICKET_KEY)
    assert abs(expires_ms - (made_at_ms + layout.TICKET_TTL_MS)) <= 1  # 12 h from when it was made


def test_a_ticket_named_by_app_id_only_is_shared_once_the_store_has_served_that_app(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores()
    assert store.put_ticket(MARKET_ID, "ticket-1") is False
    assert store.get_ticket(MARKET) is None
    shared = store.wrap(FunctionSource.constant("a-app-token", 7200.0), actors.RefreshPolicy())
    shared.fetch(request(app=MARKET, kind=actors.TokenKind.APP, app_ticket="ticket-0"))

    assert store.put_ticket(MARKET_ID, "ticket-1") is True
    assert stores().get_ticket(MARKET) == "ticket-1"


def test_a_rejected_ticket_is_not_handed_back_and_a_new_one_is_awaited(
    stores: Callable[..., SqliteStore],
) -> None:
    store, other = stores(ticket_poll=1.0), stores()
    source = FunctionSource(lambda _r: actors.Grant("t-x", 7200.0), resend=lambda app: None)
    shared = store.wrap(source, actors.RefreshPolicy())

    assert shared.resend_ticket(MARKET) is None  # none anywhere: asked Feishu, waited, nothing
    other.put_ticket(MARKET, "ticket-1")
    assert shared.resend_ticket(MARKET) == "ticket-1"  # from the file, no resend
    resends = list(source.resends)
    timer = threading.Timer(0.3, other.put_ticket, args=(MARKET, "ticket-2"))
    timer.start()
    assert shared.resend_ticket(MARKET) == "ticket-2"  # ticket-1 was refused: not handed back
    timer.join()
    assert source.resends == [MARKET_ID, MARKET_ID] and resends == [MARKET_ID]


# --- unusable rows -------------------------------------------------------------------------------

# Each puts one kind of bad state into the token row (key, the value key of another app).
BAD_ROWS: dict[str, tuple[str, tuple[object, ...]]] = {
    "a 30-day lifetime": ("UPDATE tokens SET expires_ms = ? WHERE key = ?", (30 * 24 * HOUR_MS,)),
    "a 4 MiB token": ("UPDATE tokens SET token = ? WHERE key = ?", ("t-" + "x" * (4 << 20),)),
    "a token with CR/LF": ("UPDATE tokens SET token = ? WHERE key = ?", ("t-a\r\nX-Injected: 1",)),
    "a token with a control character": ("UPDATE tokens SET token = ? WHERE key = ?", ("t-\x00",)),
    "a token that is a blob": ("UPDATE tokens SET token = ? WHERE key = ?", (b"t-blob-token",)),
    "another key's owner": ("UPDATE tokens SET owner = ? WHERE key = ?", ("0" * 32,)),
    "a version that is text": ("UPDATE tokens SET version = ? WHERE key = ?", ("seven",)),
    "a huge version": ("UPDATE tokens SET version = ? WHERE key = ?", (2**62,)),
    "an expiry that is text": ("UPDATE tokens SET expires_ms = ? WHERE key = ?", ("soon",)),
    "an expiry that is a float": ("UPDATE tokens SET expires_ms = ? WHERE key = ?", (1e300,)),
    "no expiry": ("UPDATE tokens SET expires_ms = NULL WHERE key = ?", ()),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_an_unusable_token_row_is_never_served_and_is_overwritten(
    name: str, path: str, stores: Callable[..., SqliteStore], warnings: list[str]
) -> None:
    seeded = stores().wrap(counting_source(name="seeded"), actors.RefreshPolicy())
    seeded.fetch(request())
    sql, params = BAD_ROWS[name]
    if name == "a 30-day lifetime":
        params = (now_ms() + 30 * 24 * HOUR_MS,)
    execute(path, sql, *params, KEYS.value)
    store = stores()
    source = counting_source(name="fresh")

    grant = store.wrap(source, actors.RefreshPolicy()).fetch(request())

    assert grant.token == "t-000001-fresh" and len(source.requests) == 1
    assert sum(store.faults.counts().values()) == 1
    [found] = [w for w in warnings if "unusable" in w]
    assert KEYS.value in found and "t-000001" not in found and "xxxx" not in found
    # Overwritten: the next process is served from the file again.
    served = stores().wrap(never_called(), actors.RefreshPolicy()).fetch(request())
    assert served.token == grant.token


def test_a_row_copied_from_another_apps_key_is_refused(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    other = actors.AppConfig("cli_other_app", "other-app-secret-value", base_url=APP.base_url)
    shared = stores().wrap(counting_source(name="other"), actors.RefreshPolicy())
    shared.fetch(request(app=other))
    other_key = layout.Keys.of("", other, TENANT, None).value
    execute(
        path,
        "INSERT INTO tokens SELECT ?, token, owner, version, expires_ms FROM tokens WHERE key = ?",
        KEYS.value,
        other_key,
    )
    store = stores()

    grant = store.wrap(counting_source(name="mine"), actors.RefreshPolicy()).fetch(request())

    assert grant.token == "t-000001-mine"
    assert store.faults.counts() == {"written for another key": 1}


@pytest.mark.parametrize(
    ("holder", "until"),
    [("holder-forever", 10**15), (b"holder-blob", 0), ("holder-text-until", "later"), (None, 0)],
)
def test_a_lease_row_no_holder_could_have_written_is_taken_over(
    holder: object, until: object, path: str, stores: Callable[..., SqliteStore]
) -> None:
    until_ms = now_ms() + 10 * 60_000 if until == 0 else until
    assert stores().health().reachable  # the tables exist
    execute(path, "INSERT INTO leases VALUES (?, ?, ?)", KEYS.value, holder, until_ms)
    store = stores()
    source = counting_source()

    assert store.wrap(source, actors.RefreshPolicy()).fetch(request()).token == (
        "t-000001-shared-token"
    )
    assert len(source.requests) == 1 and query(path, "SELECT * FROM leases") == []
    assert sum(store.faults.counts().values()) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE tickets SET ticket = 'a b\r\n'",
        "UPDATE tickets SET owner = 'someone else'",
        "UPDATE tickets SET made_at_ms = 'yesterday'",
        "UPDATE tickets SET expires_ms = expires_ms + 86400000",
        "UPDATE tickets SET ticket = x'00ff'",
    ],
)
def test_an_unusable_ticket_row_is_never_served_and_is_deleted(
    sql: str, path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores()
    assert store.put_ticket(MARKET, "ticket-1", made_at=time.time())
    execute(path, sql)

    assert store.get_ticket(MARKET) is None
    assert query(path, "SELECT * FROM tickets") == []
    assert store.put_ticket(MARKET, "ticket-2")  # not kept out by the bad row
    assert sum(store.faults.counts().values()) == 1


# --- a locked, failing or foreign file -----------------------------------------------------------


def test_a_file_locked_by_another_program_never_holds_up_a_get_and_sharing_resumes_after(
    path: str, stores: Callable[..., SqliteStore], warnings: list[str]
) -> None:
    store = stores(busy_timeout=0.2)
    source = counting_source()
    system = actors.TokenSystem.start(APP, store=store, source=source)
    try:
        assert listening(store)
        with connect(path) as locker:
            locker.execute("BEGIN EXCLUSIVE")  # a backup, a migration, a stuck sqlite3 shell
            # One write waits for the lock (busy_timeout), then no write waits at all.
            assert system.proxy.get_token().get(timeout=2) == "t-000001-shared-token"
            for _ in range(3):
                token = system.proxy.get_token().get(timeout=1)
                assert system.proxy.invalidate(token).get(timeout=1)
                system.proxy.get_token().get(timeout=1)
            health = store.health()
            assert not health.reachable and health.breaker_open
            assert health.last_error == "OperationalError"
            locker.execute("ROLLBACK")

        assert len(source.requests) == 4  # each fetched locally, none lost
        token = system.proxy.get_token().get(timeout=5)
        assert system.proxy.invalidate(token).get(timeout=5)
        shared = system.proxy.get_token().get(timeout=5)
        assert query(path, "SELECT token FROM tokens") == [(shared,)]  # shared again
        assert not store.health().breaker_open
    finally:
        system.stop()
    assert [w for w in warnings if "SQLite" in w] == [
        w for w in warnings if "is failing" in w or "answers again" in w
    ]
    assert sum("is failing" in w for w in warnings) == 1
    assert sum("answers again" in w for w in warnings) == 1


def test_a_connection_that_keeps_even_readers_out_never_holds_up_a_get(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    first = SqliteStore(path)  # the file and its tables exist, no connection is left open
    first.wrap(counting_source(), actors.RefreshPolicy()).fetch(request())
    first.close()
    store = stores(busy_timeout=0.2)
    source = counting_source(name="local")
    with connect(path) as locker:
        locker.execute("PRAGMA locking_mode = EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("UPDATE tokens SET version = version")  # takes the lock, keeps it

        with actors.TokenSystem.start(APP, store=store, source=source) as system:
            assert system.proxy.get_token().get(timeout=2) == "t-000001-local"


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all, but it is someone's file" * 100, "another-app"],
)
def test_a_file_that_is_not_ours_is_never_changed_and_tokens_are_still_served(
    content: bytes | str, path: str, stores: Callable[..., SqliteStore], warnings: list[str]
) -> None:
    if isinstance(content, bytes):
        Path(path).write_bytes(content)
    else:
        with connect(path) as conn:
            conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
    before = Path(path).read_bytes()
    store = stores()

    with actors.TokenSystem.start(APP, store=store, source=counting_source()) as system:
        assert system.proxy.get_token().get(timeout=5) == "t-000001-shared-token"
        assert not store.health().reachable

    assert Path(path).read_bytes() == before
    assert sum("is failing" in w for w in warnings) == 1


def test_a_file_of_a_newer_schema_is_left_alone(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    stores().put_ticket(MARKET, "ticket-1")
    execute(path, f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")

    store = stores()

    assert not store.put_ticket(MARKET, "ticket-2")
    assert query(path, "SELECT ticket FROM tickets") == [("ticket-1",)]


# --- the store itself ----------------------------------------------------------------------------


def test_a_key_is_validated_as_one_fernet_key_or_a_list_and_never_quoted(path: str) -> None:
    key, other = Fernet.generate_key(), Fernet.generate_key()
    accepted_keys: list[str | bytes | list[str | bytes]] = [
        key,
        key.decode(),
        [key, other.decode()],
    ]
    for accepted in accepted_keys:
        store = SqliteStore(path, key=accepted)
        assert key.decode() not in repr(store)
        store.close()
    for refused in ("not-a-key", [key, "not-a-key"], [], b"", 12, [12]):
        with pytest.raises(ValueError, match="python -m actors keygen") as caught:
            SqliteStore(path, key=refused)  # type: ignore[arg-type]
        assert key.decode() not in str(caught.value)
        assert "not-a-key" not in str(caught.value)


def test_paths_and_options_are_validated(tmp_path: Path, warnings: list[str]) -> None:
    for path in (":memory:", "", "file:tokens.db?mode=memory", 12):
        with pytest.raises(ValueError, match="path"):
            SqliteStore(path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not exist"):
        SqliteStore(tmp_path / "no-such-folder" / "tokens.db")
    with pytest.raises(ValueError, match="not a regular file"):
        SqliteStore(tmp_path)
    for option in ("busy_timeout", "lease", "notice_poll", "ticket_poll"):
        with pytest.raises(ValueError, match=option):
            SqliteStore(tmp_path / "tokens.db", **{option: float("nan")})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease"):
        SqliteStore(tmp_path / "tokens.db", lease=120.0)  # longer than any lease is respected
    shared = tmp_path / "shared.db"
    shared.touch()
    shared.chmod(0o660)
    SqliteStore(shared).close()
    assert not any("other users" in w for w in warnings)  # readable by the group is a choice
    shared.chmod(0o606)
    SqliteStore(shared).close()
    assert sum("open to other users" in w for w in warnings) == 1


def test_stop_closes_the_store_and_leaves_no_thread_of_ours(
    stores: Callable[..., SqliteStore],
) -> None:
    store = stores(lease=0.3)
    system = actors.TokenSystem.start(APP, store=store, source=counting_source(latency=0.1))
    assert listening(store)
    system.proxy.get_token().get(timeout=5)  # the lease renewer ran too

    system.stop()

    assert store.closed and our_threads() == []
    with pytest.raises(ValueError, match="closed"):
        store.attach(lambda _token: None)


def test_a_store_serves_one_system(
    stores: Callable[..., SqliteStore], systems: list[actors.TokenSystem]
) -> None:
    store = stores()
    systems.append(actors.TokenSystem.start(APP, store=store, source=counting_source()))
    for reuse in (
        lambda: store.attach(lambda _token: None),
        lambda: store.wrap(counting_source(), actors.RefreshPolicy()),
        lambda: actors.TokenSystem.start(APP, store=store, source=counting_source()),
    ):
        with pytest.raises(ValueError, match="already serves a TokenSystem"):
            reuse()
    assert sum(name.startswith("TokenActor") for name in our_threads()) == 1


def test_a_reopened_store_has_the_same_configuration_and_nothing_of_the_original(
    path: str, stores: Callable[..., SqliteStore], systems: list[actors.TokenSystem]
) -> None:
    key = Fernet.generate_key()
    options = {"busy_timeout": 0.3, "lease": 2.0, "ticket_poll": 0.4, "notice_poll": 0.2}
    store = stores(key=key, **options)
    systems.append(actors.TokenSystem.start(MARKET, store=store, source=counting_source()))
    assert listening(store)

    reopened = store.reopened()
    try:
        assert repr(reopened) == repr(store) and not reopened.closed
        ours, theirs = cast(Any, reopened), cast(Any, store)
        assert (reopened.lease, reopened.ticket_poll, ours._notice_poll) == (2.0, 0.4, 0.2)
        assert ours._fernet_keys == (key,) and ours._db._wait_ms == 300
        for part in ("_db", "_ledger", "_lock", "_renewer", "_closed"):
            assert getattr(ours, part) is not getattr(theirs, part), part
        assert ours._id != theirs._id  # its notices are the others' to hear, this one's too
        assert ours._notices is None  # not attached: the forked process's system does that
        assert reopened.put_ticket(MARKET, "ticket-1")
    finally:
        reopened.close()
    assert store.get_ticket(MARKET) == "ticket-1"  # closing it left the original alone


def test_reopening_takes_no_lock_of_the_original(stores: Callable[..., SqliteStore]) -> None:
    # In a forked process, a lock some parent thread held at the fork stays held forever.
    store = stores()
    internals = cast(Any, store)
    locks = [internals._lock, internals._db._lock, internals._renewer._cond]
    release = threading.Event()
    held = threading.Event()
    made: list[SqliteStore] = []

    def hold() -> None:
        with locks[0], locks[1], locks[2]:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)
    try:
        reopening = threading.Thread(target=lambda: made.append(store.reopened()), daemon=True)
        reopening.start()
        reopening.join(5)
        assert not reopening.is_alive() and len(made) == 1
    finally:
        release.set()
        holder.join(5)
    made[0].close()


def test_health_reports_a_reachable_file_the_faults_found_and_a_closed_store(
    path: str, stores: Callable[..., SqliteStore]
) -> None:
    store = stores()
    assert store.health() == actors.StoreHealth(
        where=f"sqlite:{path}", reachable=True, breaker_open=False, faults={}, last_error=None
    )
    store.put_ticket(MARKET, "ticket-1")
    execute(path, "UPDATE tickets SET ticket = x'00'")
    assert store.get_ticket(MARKET) is None

    assert store.health().faults == {"not a ticket": 1}
    store.close()
    assert not store.health().reachable


def test_the_store_is_one_class_under_every_name_and_is_a_store() -> None:
    assert actors.SqliteStore is actors.stores.SqliteStore is SqliteStore
    assert issubclass(SqliteStore, actors.stores.Store)

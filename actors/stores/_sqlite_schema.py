"""The layout in SQLite: tables, the checks every row read passes, and the transactions that
keep them consistent (what the Lua scripts are to Redis).

One file per host, in WAL mode (readers never wait for the writer); marked as this library's
by ``PRAGMA application_id`` and versioned by ``PRAGMA user_version``. Keys are the stores'
common names (:class:`~actors.stores._layout.Keys` without a prefix: app id, domain, a digest
of the credentials, tenant, kind), and every row carries the owner digest of its key, so a row
copied under another key is refused::

    tokens  (key, token, owner, version, expires_ms)     one row per token key
    leases  (key, holder, until_ms)                       the fetching process's lease, renewed
    tickets (key, ticket, owner, made_at_ms, expires_ms)  one row per app
    notices (id, digest, at_ms, notice)                   invalidation notices, oldest pruned

Times are wall-clock Unix milliseconds: every process using the file runs on one host, so on
one clock. Each operation reads the clock after it has the row (and, writing, the lock), so it
is never earlier than the clock of a write it sees. A token's ``expires_ms`` counts from before
its request left. ``version`` orders the
writes of one key (each write adds one; invalidating keeps it); a notice carries the version at
which its token was dropped, so that a value written since may be served. A notice is the same
JSON as on Redis's channel (:func:`~actors.stores._layout.parse_notice` reads both).

A store is a cache, not an authority: a row that fails its check (type, size, characters,
owner, a lifetime within (0, 2 h] for tokens or (0, 12 h] for tickets) is never served; the
next write overwrites it, and the check's fault is reported by the store.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import actors.stores._layout as layout
from actors.stores._layout import Keys
from actors.stores._shared import Acquired, Ask, wall_ms

__all__ = [
    "APPLICATION_ID",
    "LEASE_MAX_MS",
    "SCHEMA_VERSION",
    "SchemaRefused",
    "acquire",
    "last_notice",
    "notices_after",
    "peek",
    "prepare",
    "probe",
    "prune",
    "read_ticket",
    "release",
    "renew",
    "write",
    "write_ticket",
]

APPLICATION_ID = 0x4C544B41  # "LTKA": a file this library made
SCHEMA_VERSION = 1
# No lease claims more than this from now: a lease row that does (a clock stepped back, a row
# written by hand) is taken over, so that no row can keep every process waiting.
LEASE_MAX_MS = 60_000
NOTICE_TTL_MS = layout.MARKER_TTL_MS  # a notice goes out once per token within this time
NOTICE_MAX = 4096  # notices kept at most: anyone who can write the file may add any number
NOTICE_BATCH = 256  # notices a listener reads per poll
_DAY_MS = 24 * 3_600_000  # a token row outlives its value this long (its version with it)
_MAX_VERSION = 2**53

_TABLES = """
CREATE TABLE IF NOT EXISTS tokens (
    key TEXT PRIMARY KEY NOT NULL,
    token TEXT,
    owner TEXT,
    version INTEGER,
    expires_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY NOT NULL,
    holder TEXT,
    until_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tickets (
    key TEXT PRIMARY KEY NOT NULL,
    ticket TEXT,
    owner TEXT,
    made_at_ms INTEGER,
    expires_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT,
    at_ms INTEGER,
    notice TEXT
);
CREATE INDEX IF NOT EXISTS notices_by_digest ON notices (digest, at_ms);
CREATE INDEX IF NOT EXISTS notices_by_time ON notices (at_ms);
"""


class SchemaRefused(sqlite3.DatabaseError):
    """The file is not one this library may use: another application's database, or one
    written by a newer release. Nothing in it is changed."""


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, holding the file's write lock from its first statement (no read
    is ever upgraded to a write, which SQLite may refuse without waiting)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.commit()
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


def prepare(conn: sqlite3.Connection) -> str:
    """Make the file ours (tables, then WAL) or refuse it, changing nothing in a file that is
    not ours; returns the journal mode in effect. The check and the tables are one write
    transaction: processes preparing a new file at once see it empty or made, never between."""
    with immediate(conn):
        _refuse_foreign(conn)
        for statement in _TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()


def _refuse_foreign(conn: sqlite3.Connection) -> None:
    """Raise SchemaRefused unless the file is ours or empty."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == 0:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            msg = "the file is another application's SQLite database"
            raise SchemaRefused(msg)
    elif app_id != APPLICATION_ID:
        msg = "the file is another application's SQLite database"
        raise SchemaRefused(msg)
    if version > SCHEMA_VERSION:
        msg = f"the file has schema {version}, newer than this release's {SCHEMA_VERSION}"
        raise SchemaRefused(msg)


def probe(conn: sqlite3.Connection) -> None:
    """Take the write lock and give it back: raises if the file cannot be written now."""
    with immediate(conn):
        conn.execute("SELECT count(*) FROM leases").fetchone()


# --- tokens and leases -------------------------------------------------------------------------


class Stored(NamedTuple):
    """A token row as read: its usable value (None if absent, expired or unusable), its ms
    left and expiry, the key's version, and why the row is unusable ('' if it is not)."""

    token: str | None
    pttl_ms: int
    version: int
    fault: str
    expires_ms: int = 0


_TOKEN = (
    "SELECT typeof(token), length(CAST(token AS BLOB)), "
    f"CASE WHEN length(CAST(token AS BLOB)) <= {layout.MAX_TEXT} THEN token END, "
    "owner, version, expires_ms FROM tokens WHERE key = ?"
)


def _integer(value: object) -> bool:
    return type(value) is int and 0 <= value < _MAX_VERSION


def _stored_token(conn: sqlite3.Connection, keys: Keys) -> Stored:
    row = conn.execute(_TOKEN, (keys.value,)).fetchone()
    now_ms = wall_ms()
    if row is None:
        return Stored(None, 0, 0, "")
    kind, size, token, owner, version, expires_ms = row
    top = version if _integer(version) else 0
    if kind == "null":
        return Stored(None, 0, top, "" if _integer(version) else "no version")
    fault = ""
    if size is None or size > layout.MAX_TEXT:
        fault = "too large"
    elif kind != "text" or not layout.shareable(token):
        fault = "not a token"
    elif owner != keys.owner:
        fault = "written for another key"
    elif not _integer(version):
        fault = "no version"
    elif type(expires_ms) is not int or expires_ms - now_ms > layout.TOKEN_TTL_MAX_MS:
        fault = "lifetime out of bounds"
    if fault:
        return Stored(None, 0, top, fault)
    pttl = expires_ms - now_ms
    return Stored(token, pttl, top, "", expires_ms) if pttl > 0 else Stored(None, 0, top, "")


def _servable(stored: Stored, *, replaces: str, min_ms: int, since: int) -> Acquired | None:
    if stored.token is None or stored.pttl_ms <= min_ms:
        return None
    if stored.token != replaces or (since >= 0 and stored.version > since):
        return Acquired("value", stored.token, stored.pttl_ms, stored.version)
    return None


def _live_lease(conn: sqlite3.Connection, keys: Keys) -> tuple[int | None, str]:
    """The ms left of another holder's lease (None if there is none to respect), and why a
    lease row was not respected ('' if it was absent, lapsed or live)."""
    row = conn.execute("SELECT holder, until_ms FROM leases WHERE key = ?", (keys.value,))
    found = row.fetchone()
    now_ms = wall_ms()
    if found is None:
        return None, ""
    holder, until_ms = found
    if not isinstance(holder, str) or not 0 < len(holder) <= 64 or type(until_ms) is not int:
        return None, "not a lease"
    left = until_ms - now_ms
    if left > LEASE_MAX_MS:
        return None, "lease out of bounds"
    return (left if left > 0 else None), ""


def peek(
    conn: sqlite3.Connection, keys: Keys, *, replaces: str, min_ms: int, since: int
) -> Acquired | None:
    """Without any lock: the value to serve, or 'wait' while another process's lease is live;
    None when the answer needs the write lock (take the lease, overwrite an unusable row)."""
    stored = _stored_token(conn, keys)
    served = _servable(stored, replaces=replaces, min_ms=min_ms, since=since)
    if served is not None:
        return served
    if stored.fault:
        return None
    left, _ = _live_lease(conn, keys)
    if left is None:
        return None
    return Acquired("wait", "", left, stored.version)


def acquire(conn: sqlite3.Connection, keys: Keys, ask: Ask, *, origin: str) -> tuple[Acquired, str]:
    """Under the write lock: first, if asked, drop ``ask.invalidate`` (if the key still holds
    exactly it) and post one notice per token; then serve the value, or take the lease, or
    say how long the live lease has left. An unusable row is emptied (its version kept).
    Returns the answer and the fault found ('' for none)."""
    with immediate(conn):
        stored = _stored_token(conn, keys)
        if ask.invalidate:
            conn.execute(
                "UPDATE tokens SET token = NULL WHERE key = ? AND token = ?",
                (keys.value, ask.invalidate),
            )
            _post_notice(conn, ask.digest, origin, stored.version)
            stored = _stored_token(conn, keys)
        fault = stored.fault
        if fault:
            conn.execute(
                "UPDATE tokens SET token = NULL, owner = NULL, version = ?, expires_ms = ? "
                "WHERE key = ?",
                (stored.version, wall_ms(), keys.value),
            )
        served = _servable(stored, replaces=ask.replaces, min_ms=ask.min_ms, since=ask.since)
        if served is not None:
            return served, fault
        left, why = _live_lease(conn, keys)
        if left is not None:
            return Acquired("wait", "", left, stored.version), fault
        conn.execute(
            "INSERT INTO leases (key, holder, until_ms) VALUES (?, ?, ?) ON CONFLICT (key) "
            "DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms",
            (keys.value, ask.lease_id, wall_ms() + ask.lease_ms),
        )
        return Acquired("lease", "", ask.lease_ms, stored.version), fault or why


def write(
    conn: sqlite3.Connection,
    keys: Keys,
    token: str,
    ttl_ms: int,
    seen: int,
    *,
    min_ms: int,
) -> tuple[bool, str, int, str]:
    """Compare-and-set ``token`` for ``ttl_ms`` from now. Another usable token stays if it
    outlives ``min_ms`` and was written after version ``seen`` (the writer took its lease
    before it: a newer upstream answer); only versions decide, never lifetimes. The same token
    is rewritten (a new version) but never with a longer lifetime: a writer paused past its
    lease cannot extend it. Returns (written, the token kept, its ms left, the fault)."""
    with immediate(conn):
        stored = _stored_token(conn, keys)
        now_ms = wall_ms()
        expires_ms = now_ms + ttl_ms
        if stored.token is not None:
            if stored.token != token:
                if stored.pttl_ms > min_ms and stored.version > seen:
                    return False, stored.token, stored.pttl_ms, stored.fault
            else:
                expires_ms = min(expires_ms, stored.expires_ms)
        version = stored.version + 1
        conn.execute(
            "INSERT INTO tokens (key, token, owner, version, expires_ms) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET token = excluded.token, owner = excluded.owner, "
            "version = excluded.version, expires_ms = excluded.expires_ms",
            (keys.value, token, keys.owner, version, expires_ms),
        )
        return True, token, expires_ms - now_ms, stored.fault


def renew(conn: sqlite3.Connection, held: Sequence[tuple[Keys, str]], *, lease_ms: int) -> None:
    """Extend every lease still held by its id, in one transaction."""
    with immediate(conn):
        now_ms = wall_ms()
        conn.executemany(
            "UPDATE leases SET until_ms = ? WHERE key = ? AND holder = ?",
            [(now_ms + lease_ms, keys.value, lease_id) for keys, lease_id in held],
        )


def release(conn: sqlite3.Connection, keys: Keys, lease_id: str) -> None:
    """Drop the lease if ``lease_id`` still holds it."""
    with immediate(conn):
        conn.execute("DELETE FROM leases WHERE key = ? AND holder = ?", (keys.value, lease_id))


# --- app_tickets -------------------------------------------------------------------------------


class Ticket(NamedTuple):
    ticket: str
    made_at_ms: int | None


_TICKET = (
    "SELECT typeof(ticket), length(CAST(ticket AS BLOB)), "
    f"CASE WHEN length(CAST(ticket AS BLOB)) <= {layout.MAX_TEXT} THEN ticket END, "
    "owner, made_at_ms, expires_ms FROM tickets WHERE key = ?"
)


def _stored_ticket(conn: sqlite3.Connection, key: str) -> tuple[Ticket | None, str]:
    row = conn.execute(_TICKET, (key,)).fetchone()
    now_ms = wall_ms()
    if row is None:
        return None, ""
    kind, size, ticket, owner, made_at_ms, expires_ms = row
    fault = ""
    if size is not None and size > layout.MAX_TEXT:
        fault = "too large"
    elif kind != "text" or not layout.shareable(ticket):
        fault = "not a ticket"
    elif owner != layout.owner(key):
        fault = "written for another key"
    elif made_at_ms is not None and not _integer(made_at_ms):
        fault = "not a creation time"
    elif type(expires_ms) is not int or expires_ms - now_ms > layout.TICKET_TTL_MS:
        fault = "lifetime out of bounds"
    if fault:
        return None, fault
    if expires_ms <= now_ms:
        return None, ""
    return Ticket(ticket, made_at_ms), ""


def read_ticket(conn: sqlite3.Connection, key: str) -> tuple[str | None, str]:
    """The usable app_ticket at ``key`` (None if none), and why the row is unusable ('' if
    it is not; the caller then overwrites it)."""
    found, fault = _stored_ticket(conn, key)
    return (found.ticket if found is not None else None), fault


def write_ticket(
    conn: sqlite3.Connection,
    key: str,
    ticket: str,
    *,
    made_at_ms: int | None,
    ttl_ms: int,
) -> tuple[bool, str]:
    """Keep the newest app_ticket, for ``ttl_ms`` from now: a usable stored one with a
    ``made_at_ms`` stays if the new one is older or of unknown age; one without is always
    replaced. (written, fault)."""
    with immediate(conn):
        current, fault = _stored_ticket(conn, key)
        stored_at = current.made_at_ms if current is not None else None
        if stored_at is not None and (made_at_ms is None or made_at_ms < stored_at):
            return False, fault
        conn.execute(
            "INSERT INTO tickets (key, ticket, owner, made_at_ms, expires_ms) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET ticket = excluded.ticket, "
            "owner = excluded.owner, made_at_ms = excluded.made_at_ms, "
            "expires_ms = excluded.expires_ms",
            (key, ticket, layout.owner(key), made_at_ms, wall_ms() + ttl_ms),
        )
        return True, fault


def clear_ticket(conn: sqlite3.Connection, key: str) -> None:
    """Delete the row at ``key`` if it is (still) unusable."""
    with immediate(conn):
        if _stored_ticket(conn, key)[1]:
            conn.execute("DELETE FROM tickets WHERE key = ?", (key,))


# --- notices -----------------------------------------------------------------------------------


def _post_notice(conn: sqlite3.Connection, digest: str, origin: str, version: int) -> None:
    """One notice per token within NOTICE_TTL_MS; the old and the surplus ones go."""
    now_ms = wall_ms()
    recent = conn.execute(
        "SELECT 1 FROM notices WHERE digest = ? AND at_ms > ? LIMIT 1",
        (digest, now_ms - NOTICE_TTL_MS),
    ).fetchone()
    if recent is not None:
        return
    notice = json.dumps({"v": 2, "digest": digest, "origin": origin, "ver": version})
    conn.execute(
        "INSERT INTO notices (digest, at_ms, notice) VALUES (?, ?, ?)", (digest, now_ms, notice)
    )
    conn.execute("DELETE FROM notices WHERE at_ms <= ?", (now_ms - NOTICE_TTL_MS,))
    conn.execute("DELETE FROM notices WHERE id <= (SELECT max(id) FROM notices) - ?", (NOTICE_MAX,))


def last_notice(conn: sqlite3.Connection) -> int:
    """The id of the newest notice (0 for none): a listener hears the ones after it."""
    found = conn.execute("SELECT max(id) FROM notices").fetchone()[0]
    return found if type(found) is int else 0


def notices_after(conn: sqlite3.Connection, cursor: int) -> list[tuple[int, object]]:
    """Up to NOTICE_BATCH notices after id ``cursor``, oldest first: (id, the raw notice, or
    None for one too large to be a notice, never read into memory)."""
    rows = conn.execute(
        "SELECT id, CASE WHEN length(CAST(notice AS BLOB)) <= ? THEN notice END FROM notices "
        "WHERE id > ? ORDER BY id LIMIT ?",
        (layout.MAX_NOTICE_BYTES, cursor, NOTICE_BATCH),
    )
    return [(int(found_id), notice) for found_id, notice in rows.fetchall()]


def prune(conn: sqlite3.Connection) -> None:
    """Delete what nobody reads again: old notices, lapsed leases and tickets, token rows a
    day past their value (keys this host no longer serves)."""
    with immediate(conn):
        now_ms = wall_ms()
        conn.execute("DELETE FROM notices WHERE at_ms <= ?", (now_ms - NOTICE_TTL_MS,))
        conn.execute("DELETE FROM leases WHERE until_ms < ?", (now_ms - LEASE_MAX_MS,))
        conn.execute("DELETE FROM tickets WHERE expires_ms < ?", (now_ms,))
        conn.execute("DELETE FROM tokens WHERE expires_ms < ?", (now_ms - _DAY_MS,))

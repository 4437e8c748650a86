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
    grants  (digest, open_id, app_id, scope, expires_at_ms, refresh_expires_at_ms,
             granted_at_ms, version, rotating, ended, sealed)   one row per user of an app
    counters (name, value)                                the last grant version written

A user's grant is keyed by the app's credentials digest and the user's open_id; its rotation
lease is a row of ``leases`` under ``grant:<digest>:<open_id>``. Its tokens are in ``sealed``
only, encrypted (:class:`~actors.stores._grants.Sealer`); the rest is in the clear. Grant
versions come from one counter for the whole file, so a version is never written twice, not
even after the grant was deleted: a holder that read a forgotten grant cannot overwrite the
next login's.

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

import base64
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple, cast

import actors.stores._layout as layout
from actors._errors import StoreKeyError
from actors.stores._grants import Sealer, StoredGrant
from actors.stores._layout import Keys
from actors.stores._shared import Acquired, Ask, wall_ms

__all__ = [
    "APPLICATION_ID",
    "GRANT_LEASE_MAX_MS",
    "LEASE_MAX_MS",
    "SCHEMA_VERSION",
    "Columns",
    "GrantAt",
    "GrantRow",
    "SchemaRefused",
    "acquire",
    "begin_grant",
    "columns",
    "columns_fault",
    "commit_grant",
    "end_grant",
    "forget_grant",
    "grant_row",
    "last_notice",
    "lease_grant",
    "list_grants",
    "notices_after",
    "peek",
    "post_notice",
    "prepare",
    "probe",
    "prune",
    "read_grant",
    "read_ticket",
    "reason_fault",
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
CREATE TABLE IF NOT EXISTS grants (
    digest TEXT NOT NULL,
    open_id TEXT NOT NULL,
    app_id TEXT,
    scope TEXT,
    expires_at_ms INTEGER,
    refresh_expires_at_ms INTEGER,
    granted_at_ms INTEGER,
    version INTEGER,
    rotating INTEGER,
    ended TEXT,
    sealed BLOB,
    PRIMARY KEY (digest, open_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY NOT NULL,
    value INTEGER
) WITHOUT ROWID;
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
    return _into_wal(conn)


_WAL_TRIES = 40  # about 2 s of backoff in all
_WAL_BACKOFF_MAX = 0.1


def _into_wal(conn: sqlite3.Connection) -> str:
    """Switch the file to WAL; the journal mode in effect. The switch needs the file to itself
    and answers "database is locked" at once, without the busy timeout, while another
    connection reads it (processes opening a new file together): try again, briefly, and take
    a switch another connection made meanwhile."""
    delay = 0.001
    for _ in range(_WAL_TRIES):
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode == "wal":
            return mode
        time.sleep(delay)  # a lock held for a moment by another opener: no event to wait on
        delay = min(delay * 2, _WAL_BACKOFF_MAX)
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


def _lease_row(
    conn: sqlite3.Connection, key: str, *, most_ms: int
) -> tuple[str | None, int | None, str]:
    """The lease at ``key``: its holder (None if there is none to respect), the ms it has
    left (None if it lapsed), and why a lease row was not respected ('' if it was absent,
    lapsed or live). A row claiming more than ``most_ms`` from now is not respected."""
    found = conn.execute("SELECT holder, until_ms FROM leases WHERE key = ?", (key,)).fetchone()
    now_ms = wall_ms()
    if found is None:
        return None, None, ""
    holder, until_ms = found
    if not isinstance(holder, str) or not 0 < len(holder) <= 64 or type(until_ms) is not int:
        return None, None, "not a lease"
    left = until_ms - now_ms
    if left > most_ms:
        return None, None, "lease out of bounds"
    return holder, (left if left > 0 else None), ""


def _live_lease(conn: sqlite3.Connection, keys: Keys) -> tuple[int | None, str]:
    """The ms left of another holder's lease (None if there is none to respect), and why a
    lease row was not respected ('' if it was absent, lapsed or live)."""
    _, left, why = _lease_row(conn, keys.value, most_ms=LEASE_MAX_MS)
    return left, why


def _take_lease(conn: sqlite3.Connection, key: str, lease_id: str, lease_ms: int) -> None:
    conn.execute(
        "INSERT INTO leases (key, holder, until_ms) VALUES (?, ?, ?) ON CONFLICT (key) "
        "DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms",
        (key, lease_id, wall_ms() + lease_ms),
    )


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
            post_notice(conn, ask.digest, origin, stored.version)
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
        _take_lease(conn, keys.value, ask.lease_id, ask.lease_ms)
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


def release(conn: sqlite3.Connection, key: str, lease_id: str) -> None:
    """Drop the lease at ``key`` (a token's value key, or a grant's lease key) if
    ``lease_id`` still holds it."""
    with immediate(conn):
        conn.execute("DELETE FROM leases WHERE key = ? AND holder = ?", (key, lease_id))


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


def post_notice(conn: sqlite3.Connection, digest: str, origin: str, version: int) -> None:
    """One notice per token within NOTICE_TTL_MS; the old and the surplus ones go."""
    now_ms = wall_ms()
    recent = conn.execute(
        "SELECT 1 FROM notices WHERE digest = ? AND at_ms > ? LIMIT 1",
        (digest, now_ms - NOTICE_TTL_MS),
    ).fetchone()
    if recent is not None:
        return
    notice = layout.notice(digest, origin=origin, version=version)
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


# --- user grants -------------------------------------------------------------------------------

# A grant lease claiming more than this from now is taken over (as LEASE_MAX_MS for tokens): a
# rotation's lease is one attempt's deadline plus a few seconds.
GRANT_LEASE_MAX_MS = 15 * 60_000
_NAME_MAX = 256  # characters of an open_id
_SCOPE_MAX = 8192  # bytes of a grant's scope, as JSON
_REASON_MAX = 64  # characters of an ended grant's reason
_SEALED_MAX = 4 * layout.MAX_VALUE_BYTES  # two tokens of at most MAX_TEXT, encrypted
_FERNET_OVERHEAD = 57  # version, timestamp, IV and HMAC of a Fernet token (bytes)
_VERSIONS = "grant version"  # the counter every grant version is drawn from


class GrantAt(NamedTuple):
    """Where a user's grant is: the app's credentials digest, its app_id, the user."""

    digest: str
    app_id: str
    open_id: str

    @property
    def lease(self) -> str:
        """The ``leases`` row of the user's rotation (a digest is 64 hex: no token key
        looks so)."""
        return f"grant:{self.digest}:{self.open_id}"


class Columns(NamedTuple):
    """A grant row's columns after ``digest``, in the table's order."""

    open_id: object
    app_id: object
    scope: object
    expires_at_ms: object
    refresh_expires_at_ms: object
    granted_at_ms: object
    version: object
    rotating: object
    ended: object
    sealed: object


class GrantRow(NamedTuple):
    """A grant row as read: the grant (None if absent or unusable), why the row is unusable
    ('' if it is not), and the highest version it shows (0 for none): the next is above it."""

    grant: StoredGrant | None
    fault: str
    top: int


def columns(grant: StoredGrant, sealed: bytes | None) -> Columns:
    """What ``grant`` is written as, its tokens ``sealed`` (None for an ended grant)."""
    return Columns(
        grant.open_id,
        grant.app_id,
        json.dumps(list(grant.scope)),
        grant.expires_at_ms,
        grant.refresh_expires_at_ms,
        grant.granted_at_ms,
        grant.version,
        grant.rotating,
        grant.ended,
        sealed,
    )


def _bounded(column: str, most: int) -> str:
    # Nothing larger than `most` is read into memory: its size says why it is refused.
    size = f"length(CAST({column} AS BLOB))"
    return f"{size}, CASE WHEN {size} <= {most} THEN {column} END"


_LARGE = ("open_id", "app_id", "scope", "ended", "sealed")
_LIMITS = {
    "open_id": 4 * _NAME_MAX,
    "app_id": 4 * _NAME_MAX,
    "scope": _SCOPE_MAX,
    "ended": _REASON_MAX,
    "sealed": _SEALED_MAX,
}
_GRANT = "SELECT " + ", ".join(
    _bounded(name, _LIMITS[name]) if name in _LARGE else name for name in Columns._fields
)
_PUT_GRANT = (
    f"INSERT INTO grants (digest, {', '.join(Columns._fields)}) "
    f"VALUES ({', '.join('?' * (len(Columns._fields) + 1))}) "
    "ON CONFLICT (digest, open_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in Columns._fields[1:])
)


def _unpacked(row: Sequence[object]) -> tuple[Columns, bool]:
    """A row as :data:`_GRANT` reads it: its columns, and whether one was too large."""
    values: list[object] = []
    too_large = False
    at = iter(row)
    for name in Columns._fields:
        if name in _LARGE:
            size, value = next(at), next(at)
            too_large = too_large or (value is None and size is not None)
            values.append(value)
        else:
            values.append(next(at))
    return Columns(*values), too_large


def _fernet_shaped(sealed: object) -> bool:
    """Whether ``sealed`` can be a Fernet token at all: if not, it is not one some other key
    opens, it is a broken row."""
    if not isinstance(sealed, bytes) or not sealed:
        return False
    try:
        raw = base64.urlsafe_b64decode(sealed)
    except ValueError:
        return False
    body = len(raw) - _FERNET_OVERHEAD
    return raw[:1] == b"\x80" and body > 0 and body % 16 == 0


def reason_fault(reason: object) -> str:
    """Why ``reason`` cannot be an ended grant's ('' if it can)."""
    if layout.shareable(reason) and len(str(reason)) <= _REASON_MAX:
        return ""
    return "not a reason"


def columns_fault(row: Columns, *, app_id: str) -> str:
    """Why ``row`` cannot be a grant of ``app_id`` ('' if it can): every row read, and every
    row before it is written."""
    if not (layout.shareable(row.open_id) and len(str(row.open_id)) <= _NAME_MAX):
        return "not a user"
    if row.app_id != app_id:
        return "written for another key"
    if not _integer(row.version) or row.version == 0:
        return "no version"
    if not all(_integer(t) for t in (row.expires_at_ms, row.granted_at_ms)) or not (
        row.refresh_expires_at_ms is None or _integer(row.refresh_expires_at_ms)
    ):
        return "not a time"
    if not (row.rotating is None or _integer(row.rotating)):
        return "not a rotation"
    if row.ended is not None and reason_fault(row.ended):
        return "not a reason"
    if row.ended is None and not (
        isinstance(row.sealed, bytes)
        and len(row.sealed) <= _SEALED_MAX
        and _fernet_shaped(row.sealed)
    ):
        return "no sealed tokens"
    if _scope(row.scope) is None:
        return "not a scope"
    return ""


def _scope(raw: object) -> tuple[str, ...] | None:
    if not isinstance(raw, str) or len(raw.encode()) > _SCOPE_MAX:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(each, str) for each in value):
        return None
    return tuple(value)


def grant_row(row: Sequence[object], *, app_id: str, sealer: Sealer) -> GrantRow:
    """The grant in ``row`` (as :data:`_GRANT` reads it), its tokens opened by ``sealer``:
    raises :class:`~actors._errors.StoreKeyError` if they are sealed with a key it does not
    have (the row is then left as it is by every operation)."""
    found, too_large = _unpacked(row)
    top = cast(int, found.version) if _integer(found.version) else 0
    fault = "too large" if too_large else columns_fault(found, app_id=app_id)
    if fault:
        return GrantRow(None, fault, top)
    access_token, refresh_token = "", None
    if found.ended is None:
        plain = sealer.open(cast(bytes, found.sealed))
        try:
            access_token, refresh_token = StoredGrant.opened(
                plain, app_id=app_id, open_id=cast(str, found.open_id)
            )
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return GrantRow(None, "sealed tokens malformed", top)
        fault = layout.tokens_fault(access_token, refresh_token)
        if fault:
            return GrantRow(None, fault, top)
    grant = StoredGrant(
        app_id=app_id,
        open_id=cast(str, found.open_id),
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at_ms=cast(int, found.expires_at_ms),
        refresh_expires_at_ms=cast("int | None", found.refresh_expires_at_ms),
        scope=cast("tuple[str, ...]", _scope(found.scope)),
        granted_at_ms=cast(int, found.granted_at_ms),
        version=top,
        rotating=cast("int | None", found.rotating),
        ended=cast("str | None", found.ended),
    )
    return GrantRow(grant, "", top)


# The fault of a grant no key of this store opens (listed as absent; its user's gets raise).
SEALED_ELSEWHERE = "sealed with a key this store does not have"


def read_grant(conn: sqlite3.Connection, at: GrantAt, sealer: Sealer) -> GrantRow:
    """The grant at ``at`` (see :func:`grant_row`)."""
    row = conn.execute(
        f"{_GRANT} FROM grants WHERE digest = ? AND open_id = ?", (at.digest, at.open_id)
    ).fetchone()
    return GrantRow(None, "", 0) if row is None else grant_row(row, app_id=at.app_id, sealer=sealer)


def list_grants(
    conn: sqlite3.Connection, digest: str, app_id: str, sealer: Sealer
) -> list[tuple[str, GrantRow]]:
    """Every live grant row under ``digest``, each with the user it names ('?' for a name
    that cannot be one)."""
    rows = conn.execute(f"{_GRANT} FROM grants WHERE digest = ? AND ended IS NULL", (digest,))
    found = []
    for row in rows.fetchall():
        user = row[1] if layout.shareable(row[1]) and len(row[1]) <= _NAME_MAX else "?"
        try:
            found.append((user, grant_row(row, app_id=app_id, sealer=sealer)))
        except StoreKeyError:  # that user's gets say so; the others are listed all the same
            found.append((user, GrantRow(None, SEALED_ELSEWHERE, 0)))
    return found


def lease_grant(
    conn: sqlite3.Connection, key: str, lease_id: str, *, lease_ms: int
) -> tuple[int, str]:
    """Take (or, for its holder, extend) the lease at ``key``: (0, fault) if ``lease_id``
    holds it now, else (the ms the holder's lease has left, '')."""
    with immediate(conn):
        holder, left, why = _lease_row(conn, key, most_ms=GRANT_LEASE_MAX_MS)
        if left is not None and holder != lease_id:
            return left, ""
        _take_lease(conn, key, lease_id, lease_ms)
        return 0, why


def begin_grant(
    conn: sqlite3.Connection, at: GrantAt, sealer: Sealer, *, lease_id: str, version: int
) -> tuple[bool, str]:
    """Mark grant ``version`` as rotating, if ``lease_id`` holds a live lease on it and it is
    still the stored one: (whether it was marked, the row's fault)."""
    with immediate(conn):
        holder, left, _ = _lease_row(conn, at.lease, most_ms=GRANT_LEASE_MAX_MS)
        stored = read_grant(conn, at, sealer)
        if holder != lease_id or left is None or stored.grant is None:
            return False, stored.fault
        if stored.grant.version != version:
            return False, ""
        conn.execute(
            "UPDATE grants SET rotating = ? WHERE digest = ? AND open_id = ?",
            (version, at.digest, at.open_id),
        )
        return True, ""


def commit_grant(
    conn: sqlite3.Connection, at: GrantAt, sealer: Sealer, *, row: Columns, expect: int | None
) -> tuple[int | None, str]:
    """Write ``row`` (the grant at ``at``; its version replaced by the file's next) if the
    stored grant's version is ``expect`` (0: none or an unusable row; None: any): (the new
    version or None, the stored row's fault)."""
    with _durable(conn), immediate(conn):
        try:
            stored = read_grant(conn, at, sealer)
        except StoreKeyError:
            if expect is not None:
                raise
            # A new login replaces a grant no key here opens (nothing of it can be used).
            stored = GrantRow(None, SEALED_ELSEWHERE, _raw_version(conn, at))
        current = stored.grant.version if stored.grant is not None else 0
        if expect is not None and current != expect:
            return None, stored.fault
        version = _next_version(conn, stored.top)
        conn.execute(_PUT_GRANT, (at.digest, *row._replace(version=version)))
        return version, stored.fault


def end_grant(
    conn: sqlite3.Connection, at: GrantAt, sealer: Sealer, *, reason: str, expect: int
) -> tuple[bool, str]:
    """Mark grant ``expect`` ended for ``reason``, its tokens erased, if it is still the
    stored one: (whether it was, the row's fault)."""
    with immediate(conn):
        stored = read_grant(conn, at, sealer)
        if stored.grant is None or stored.grant.version != expect:
            return False, stored.fault
        ended = dataclasses.replace(
            stored.grant,
            access_token="",
            refresh_token=None,
            version=_next_version(conn, stored.top),
            rotating=None,
            ended=reason,
        )
        conn.execute(_PUT_GRANT, (at.digest, *columns(ended, None)))
        return True, ""


def forget_grant(conn: sqlite3.Connection, at: GrantAt, sealer: Sealer) -> tuple[bool, str]:
    """Delete the grant at ``at``, a logout (one sealed with a key ``sealer`` lacks too: the
    user asked for it to go): (whether one was there, the row's fault)."""
    with immediate(conn):
        try:
            stored = read_grant(conn, at, sealer)
        except StoreKeyError:
            stored = GrantRow(None, "", 0)
            there = True
        else:
            there = stored.grant is not None
        conn.execute("DELETE FROM grants WHERE digest = ? AND open_id = ?", (at.digest, at.open_id))
        return there, stored.fault


@contextlib.contextmanager
def _durable(conn: sqlite3.Connection) -> Iterator[None]:
    """A transaction synced to disk when it commits (``synchronous = FULL``): the refresh token
    a grant commit replaces is dead at Feishu already, so a power loss must not roll it back.
    Token and ticket writes stay ``NORMAL`` (a lost one is fetched again)."""
    conn.execute("PRAGMA synchronous = FULL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous = NORMAL")


def _raw_version(conn: sqlite3.Connection, at: GrantAt) -> int:
    row = conn.execute(
        "SELECT version FROM grants WHERE digest = ? AND open_id = ?", (at.digest, at.open_id)
    ).fetchone()
    return row[0] if row is not None and _integer(row[0]) else 0


def _next_version(conn: sqlite3.Connection, top: int) -> int:
    """The next grant version of the file: above every one written before (the counter) and
    above ``top`` (the row's own, should the counter be damaged)."""
    found = conn.execute("SELECT value FROM counters WHERE name = ?", (_VERSIONS,)).fetchone()
    last = found[0] if found is not None and _integer(found[0]) else 0
    version = max(last, top) + 1
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (_VERSIONS, version),
    )
    return int(version)

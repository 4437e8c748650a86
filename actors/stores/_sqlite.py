"""SqliteStore: tokens, app_tickets and user grants shared by the processes of one host
through one file.

Every process keeps its own TokenActor (L1); the file is the shared L2, as Redis is for many
hosts: :meth:`SqliteStore.wrap` puts the system's :class:`TokenSource` behind a
:class:`~actors.stores._shared.SharedSource` (the file first, one process per key upstream
under a lease, the others wait for its value). What every shared store does for its system
(one system per store, the ledger, the lease renewer, the listener thread, app_tickets) is
:class:`~actors.stores._shared.SharedStore`'s; this store adds its connections
(:class:`Database`), the :class:`NoticeListener` that polls the notices table for other
processes' invalidations, and :class:`SqliteGrants`, the user grants kept in the file.

A locked or failing file never holds up a get: a write waits at most ``busy_timeout`` for the
lock, and while writes fail the next ones do not wait at all; each process then fetches its own
tokens until a write succeeds again. The file is a cache, not an authority: rows are checked
where they are read (:mod:`actors.stores._sqlite_schema`) and an unusable one is overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, cast

from loguru import logger

import actors.stores._layout as layout
import actors.stores._sqlite_schema as schema
from actors._config import AppConfig, TokenKind
from actors.stores._base import StoreHealth, credentials_digest
from actors.stores._grants import (
    FernetKeys,
    GrantBook,
    Sealer,
    StoredGrant,
    fernet_keys,
)
from actors.stores._layout import Keys
from actors.stores._shared import Acquired, Ask, SharedStore, Unavailable

__all__ = ["SqliteStore"]

_log = logger.bind(component="SqliteStore")
_T = TypeVar("_T")

# How long a lease outlives its holder's last renewal: a holder killed or paused mid-fetch
# keeps the other processes waiting this long at most.
DEFAULT_LEASE = 1.5
_IDLE_MAX = 8  # connections a store keeps open for reuse
_PATIENT_MS = 2000  # how long a user grant's write waits for the lock
_SWEEP_EVERY = 60.0  # how often a listener deletes what nobody reads again
_MIN_SQLITE = (3, 24, 0)  # upserts (INSERT ... ON CONFLICT DO UPDATE)


class SqliteStore(SharedStore):
    """The shared token tier of one host: ``TokenSystem.start(app, store=SqliteStore(path))``.

    Every process on the host that uses the same file shares its tokens, app_tickets and
    invalidations: one upstream request per refresh across all of them. The file must be on a
    local file system (SQLite's locks do not hold over network file systems); it is created
    with permissions 0600, readable by its owner only.

    Args:
        path: The database file (created if missing, in a folder that must exist).
        key: A Fernet key (``python -m actors keygen``), or a list of them (the first
            encrypts, all decrypt), for the user grants the store keeps encrypted; default:
            the ``FEISHU_TOKEN_KEY`` environment variable (keys separated by commas). A store
            without a key serves app and tenant tokens, and keeps no user grant.
        busy_timeout: How long a write waits for the file's lock, in seconds; while writes
            fail, they do not wait at all (each process fetches its own tokens meanwhile).
        lease: How long a key's lease outlives its holder's last renewal, in seconds: the
            holder renews it while it fetches, so a holder that was killed or paused is taken
            over after this long.
        ticket_poll: How long ``resend_ticket`` waits for another process's app_ticket;
            default: half the policy's ``ticket_wait``.
        notice_poll: How often the notices table is read, in seconds: an invalidation reaches
            every process within about this long.

    In a process forked from the one that made it, :meth:`reopened` makes the store that
    process uses.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: FernetKeys | None = None,
        busy_timeout: float = 0.25,
        lease: float = DEFAULT_LEASE,
        ticket_poll: float | None = None,
        notice_poll: float = 0.1,
    ) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:  # pragma: no cover - the build's SQLite
            msg = (
                f"SqliteStore needs SQLite 3.24 or newer, this Python has {sqlite3.sqlite_version}"
            )
            raise RuntimeError(msg)
        self.path = _check_path(path)
        self._fernet_keys = fernet_keys(key)
        for name, value in (("busy_timeout", busy_timeout), ("notice_poll", notice_poll)):
            _check_seconds(name, value, most=60.0)
        _check_seconds("lease", lease, most=schema.LEASE_MAX_MS / 1000)
        if ticket_poll is not None:
            _check_seconds("ticket_poll", ticket_poll, most=3600.0)
        _create(self.path)
        self._setup(
            name="SqliteStore", lease=lease, ticket_poll=ticket_poll, threads="actors-sqlite"
        )
        self._busy_timeout = busy_timeout
        self._notice_poll = notice_poll
        self._db = Database(self.path, busy_timeout=busy_timeout, closed=self._closed)
        self._grants = SqliteGrants(
            self, Sealer(self._fernet_keys, owner=f"SqliteStore {self.path}")
        )

    # --- the system's side ---------------------------------------------------------------------

    def reopened(self) -> SqliteStore:
        """A store like this one for a process forked from the one that made it: connections,
        ledger, threads and notice id of its own; it opens the file on first use. Nothing of
        this store is touched (a connection must never cross a fork)."""
        return SqliteStore(
            self.path,
            key=self._fernet_keys or None,
            busy_timeout=self._busy_timeout,
            lease=self._lease,
            ticket_poll=self.ticket_poll,
            notice_poll=self._notice_poll,
        )

    def grants(self) -> SqliteGrants:
        """The user grants kept in the file, their tokens encrypted with the store's key
        (without one, :meth:`SqliteGrants.check_writable` says how to make one)."""
        return self._grants

    def health(self) -> StoreHealth:
        """Whether the file's write lock can be taken now (within ``busy_timeout``, never
        longer), whether writes are failing (``breaker_open``: they do not wait for the lock
        meanwhile), the unusable rows found so far by fault, and the class name of the last
        failure."""
        reachable = not self.closed and self._db.probe()
        return StoreHealth(
            where=f"sqlite:{self.path}",
            reachable=reachable,
            breaker_open=self._db.failing,
            faults=self.faults.counts(),
            last_error=self._db.last_error,
        )

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    # --- the tier (the source's side) ----------------------------------------------------------

    def keys(self, app: AppConfig, kind: TokenKind, tenant_key: str | None) -> Keys:
        return Keys.of("", app, kind, tenant_key)

    def ticket_key(self, app: AppConfig) -> str:
        return layout.ticket_key("", app)

    def _listener(self, on_notice: Callable[[str], object]) -> NoticeListener:
        return NoticeListener(self, on_notice)

    def _write_ticket(self, key: str, ticket: str, *, made_at_ms: int | None, ttl_ms: int) -> bool:
        written, fault = self._db.write(
            lambda conn: schema.write_ticket(
                conn, key, ticket, made_at_ms=made_at_ms, ttl_ms=ttl_ms
            )
        )
        self.faults.report(key, fault, what="app_ticket")
        return written

    def _post_notice(self, digest: str) -> None:
        self._db.write(lambda conn: schema.post_notice(conn, digest, self._id, -1))

    def _failing(self) -> bool:
        return self._db.failing

    def _disconnect(self, *, deadline: float) -> None:
        self._db.close()

    def _acquire(self, keys: Keys, ask: Ask) -> Acquired:
        """See :meth:`~actors.stores._shared.SharedStore.acquire`. A value to serve and a
        live lease are read without the write lock."""
        if not ask.invalidate:
            seen = self._db.read(
                lambda conn: schema.peek(
                    conn, keys, replaces=ask.replaces, min_ms=ask.min_ms, since=ask.since
                )
            )
            if seen is not None:
                return seen
        got, fault = self._db.write(lambda conn: schema.acquire(conn, keys, ask, origin=self._id))
        self.faults.report(keys.value, fault)
        return got

    def write(
        self, keys: Keys, token: str, ttl_ms: int, seen: int, *, min_ms: int = 0
    ) -> tuple[bool, str, int]:
        written, kept, pttl, fault = self._db.write(
            lambda conn: schema.write(conn, keys, token, ttl_ms, seen, min_ms=min_ms)
        )
        self.faults.report(keys.value, fault)
        return written, kept, pttl

    def renew(self, held: Sequence[tuple[Keys, str]]) -> None:
        self._db.write(lambda conn: schema.renew(conn, held, lease_ms=self._lease_ms))

    def release(self, keys: Keys, lease_id: str) -> None:
        try:
            self._db.write(lambda conn: schema.release(conn, keys.value, lease_id))
        except Unavailable:
            pass  # the lease lapses by itself

    def get_ticket(self, app: AppConfig) -> str | None:
        key = self.ticket_key(app)
        ticket, fault = self._db.read(lambda conn: schema.read_ticket(conn, key))
        if fault:
            self.faults.report(key, fault, what="app_ticket")
            with contextlib.suppress(Unavailable):
                self._db.write(lambda conn: schema.clear_ticket(conn, key))
        return ticket


class SqliteGrants(GrantBook):
    """The user grants of a :class:`SqliteStore`, in its file (``store.grants()``): every
    operation is one transaction, and the tokens are sealed with the store's key. A row that
    fails its check is counted in the store's ``faults`` and treated as absent (the next
    commit overwrites it); one sealed with a key the store lacks raises
    :class:`~actors._errors.StoreKeyError` and no operation changes or deletes it.

    A commit names its app by app_id only: the book finds its configuration among the apps
    the store served (every operation of the book serves its app)."""

    def __init__(self, store: SqliteStore, sealer: Sealer) -> None:
        self.name = sealer.owner
        self._store = store
        self._db = store._db
        self._sealer = sealer

    def check_writable(self) -> None:
        self._sealer.check()

    def read(self, app: AppConfig, user: str) -> StoredGrant | None:
        at = self._at(app, user)
        found = self._db.read(lambda conn: schema.read_grant(conn, at, self._sealer))
        self._report(at, found.fault)
        return found.grant

    def lease(self, app: AppConfig, user: str, lease_id: str, *, lease_ms: int) -> int:
        if not (isinstance(lease_id, str) and 0 < len(lease_id) <= 64):
            msg = "a grant's lease id must be a string of 1 to 64 characters"
            raise ValueError(msg)
        most = schema.GRANT_LEASE_MAX_MS
        if type(lease_ms) is not int or not 0 < lease_ms <= most:
            msg = f"a grant's lease must last 1 to {most} ms, got {lease_ms!r}"
            raise ValueError(msg)
        key = self._at(app, user).lease
        left, fault = self._db.write(
            lambda conn: schema.lease_grant(conn, key, lease_id, lease_ms=lease_ms), patient=True
        )
        self._report(self._at(app, user), fault, what="user grant lease")
        return left

    def release(self, app: AppConfig, user: str, lease_id: str) -> None:
        key = self._at(app, user).lease
        try:
            self._db.write(lambda conn: schema.release(conn, key, lease_id), patient=True)
        except Unavailable:
            pass  # the lease lapses by itself

    def begin(self, app: AppConfig, user: str, lease_id: str, *, version: int) -> bool:
        return self._written(
            self._at(app, user),
            lambda conn, at: schema.begin_grant(
                conn, at, self._sealer, lease_id=lease_id, version=version
            ),
        )

    def commit(self, grant: StoredGrant, *, expect: int | None) -> int | None:
        sealed = self._sealer.seal(grant.secrets())
        app = layout.checked_commit(self.name, grant, expect, self._store.served(grant.app_id))
        at = self._at(app, grant.open_id)
        # As it is written: the version is the file's next, no rotation, not ended.
        row = schema.columns(
            dataclasses.replace(grant, version=1, rotating=None, ended=None), sealed
        )
        fault = schema.columns_fault(row, app_id=grant.app_id)
        if fault:
            msg = f"{self.name} cannot keep this grant of {grant.app_id}: {fault}"
            raise ValueError(msg)
        return self._written(
            at,
            lambda conn, at: schema.commit_grant(conn, at, self._sealer, row=row, expect=expect),
        )

    def end(self, app: AppConfig, user: str, reason: str, *, expect: int) -> bool:
        if schema.reason_fault(reason):
            msg = f"a grant's end reason must be 1 to 64 printable ASCII characters, got {reason!r}"
            raise ValueError(msg)
        return self._written(
            self._at(app, user),
            lambda conn, at: schema.end_grant(conn, at, self._sealer, reason=reason, expect=expect),
        )

    def forget(self, app: AppConfig, user: str) -> bool:
        return self._written(
            self._at(app, user), lambda conn, at: schema.forget_grant(conn, at, self._sealer)
        )

    def grants(self, app: AppConfig) -> list[StoredGrant]:
        at = self._at(app, "")
        rows = self._db.read(
            lambda conn: schema.list_grants(conn, at.digest, app.app_id, self._sealer)
        )
        live = []
        for user, found in rows:
            self._report(at._replace(open_id=user), found.fault)
            if found.grant is not None:
                live.append(found.grant)
        return live

    def _at(self, app: AppConfig, user: str) -> schema.GrantAt:
        """Where ``user``'s grant of ``app`` is; the store remembers the app, for
        :meth:`commit`."""
        self._store.serves(app)
        return schema.GrantAt(credentials_digest(app), app.app_id, user)

    def _written(
        self,
        at: schema.GrantAt,
        op: Callable[[sqlite3.Connection, schema.GrantAt], tuple[_T, str]],
    ) -> _T:
        """``op`` in a write transaction; the fault it found in the user's row is reported."""
        result, fault = self._db.write(lambda conn: op(conn, at), patient=True)
        self._report(at, fault)
        return result

    def _report(self, at: schema.GrantAt, fault: str, *, what: str = "user grant") -> None:
        self._store.faults.report(f"grant:{at.app_id}:{at.open_id}", fault, what=what)


class NoticeListener:
    """Polls the notices table: other processes' invalidation notices become
    ``on_notice(token)`` calls for the tokens this process was handed (on its own thread).
    Each poll reads a bounded batch after its cursor; it also prunes the file now and then."""

    def __init__(self, store: SqliteStore, on_notice: Callable[[str], object]) -> None:
        self._store = store
        self._on_notice = on_notice
        self.listening = threading.Event()  # the cursor is set: notices posted from now arrive

    def run(self) -> None:
        store = self._store
        db, closed = store._db, store._closed
        cursor: int | None = None
        sweep_at = time.monotonic()
        while not closed.is_set():
            full = False
            try:
                if cursor is None:
                    cursor = db.read(schema.last_notice)
                    self.listening.set()
                cursor, full = self._poll(cursor)
                if time.monotonic() >= sweep_at:
                    sweep_at = time.monotonic() + _SWEEP_EVERY
                    self._sweep()
            except Unavailable:
                pass  # the store said so; the next poll tries again
            if not full:
                closed.wait(store._notice_poll)

    def _poll(self, cursor: int) -> tuple[int, bool]:
        """Deliver the notices after ``cursor``: (the new cursor, whether the batch was full)."""
        batch = self._store._db.read(lambda conn: schema.notices_after(conn, cursor))
        for _, raw in batch:
            self._store.deliver_notice(raw, self._on_notice)
        return (batch[-1][0] if batch else cursor), len(batch) == schema.NOTICE_BATCH

    def _sweep(self) -> None:
        self._store._db.write(schema.prune)


class Database:
    """The store's way to its file: a small pool of connections, and whether writes fail.

    Every call answers or raises :class:`Unavailable`. A write waits at most ``busy_timeout``
    for the lock; after one failed, writes do not wait (``failing``, one WARNING) until one
    succeeds again (one more). Reads never need the write lock in WAL mode.
    """

    def __init__(self, path: str, *, busy_timeout: float, closed: threading.Event) -> None:
        self._path = path
        self._wait_ms = max(1, round(busy_timeout * 1000))
        self._closed = closed
        # A plain lock under the condition: the fork hooks take it in one thread and give it
        # back in the child's, where the taking thread has another identity.
        self._lock = threading.Condition(threading.Lock())
        self._idle: list[_Connection] = []
        self._in_use = 0
        self._preparing = threading.Lock()
        self._prepared = False
        _DATABASES.add(self)
        self.failing = False
        self.last_error: str | None = None

    def read(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        return self._run(op, write=False)

    def write(self, op: Callable[[sqlite3.Connection], _T], *, patient: bool = False) -> _T:
        """``op`` in a write; ``patient``: wait for the lock up to ``_PATIENT_MS`` even while
        writes fail (a user grant's operations: a worker waits, and a redemption must not fail
        for a moment's lock)."""
        return self._run(op, write=True, patient=patient)

    def probe(self) -> bool:
        """Whether the write lock can be taken now (waiting ``busy_timeout`` at most, even
        while writes fail). A failed probe is remembered as the last error, nothing more."""
        try:
            with self._connection(wait_ms=self._wait_ms) as conn:
                schema.probe(conn)
        except (sqlite3.Error, OSError, Unavailable) as exc:
            self.last_error = type(exc).__name__
            return False
        self._succeeded()
        return True

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def hold_for_fork(self, wait: float) -> bool:
        """Before ``fork()``: close every connection (waiting up to ``wait`` for the ones in
        use), and keep the pool's lock until :meth:`fork_done`, so that none opens before the
        fork. A child that inherited an open connection would inherit SQLite's record of the
        locks this process holds on the file, without the locks themselves. False if the
        lock was not free within ``wait`` (the pool is left as it is)."""
        deadline = time.monotonic() + wait
        if not self._lock.acquire(timeout=wait):
            return False
        while self._in_use and (left := deadline - time.monotonic()) > 0:
            self._lock.wait(left)
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        return True

    def fork_done(self) -> None:
        """After ``fork()``, in the parent and in the child: the pool's lock is free again."""
        self._lock.release()

    def _run(
        self, op: Callable[[sqlite3.Connection], _T], *, write: bool, patient: bool = False
    ) -> _T:
        if patient:
            wait_ms = max(self._wait_ms, _PATIENT_MS)
        else:
            wait_ms = 0 if write and self.failing else self._wait_ms
        try:
            with self._connection(wait_ms=wait_ms) as conn:
                result = op(conn)
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            raise Unavailable from exc
        if write:
            self._succeeded()
        return result

    @contextlib.contextmanager
    def _connection(self, *, wait_ms: int) -> Iterator[sqlite3.Connection]:
        if self._closed.is_set():
            raise Unavailable
        with self._lock:
            connection = self._idle.pop() if self._idle else None
            self._in_use += 1
        try:
            if connection is None:
                connection = _Connection(self._path, wait_ms=self._wait_ms)
            connection.waits(wait_ms=wait_ms)
            if not self._prepared:
                self._prepare(connection)
            yield connection.db
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                self._prepared = False  # someone dropped a table: make them again
            raise
        finally:
            reusable = connection is not None and connection.settled()
            with self._lock:
                self._in_use -= 1
                self._lock.notify_all()
                keep = reusable and not self._closed.is_set() and len(self._idle) < _IDLE_MAX
                if keep:
                    self._idle.append(cast(_Connection, connection))
            if not keep and connection is not None:
                connection.close()

    def _prepare(self, connection: _Connection) -> None:
        with self._preparing:  # one thread of this process at a time (each would do it all)
            if self._prepared:
                return
            mode = schema.prepare(connection.db)
            if mode != "wal":
                _log.warning(
                    "SQLite at {} is in journal mode {}, not WAL: readers wait for writers",
                    self._path,
                    mode,
                )
            self._prepared = True

    def _failed(self, error: BaseException) -> None:
        self.last_error = type(error).__name__
        with self._lock:
            began, self.failing = not self.failing, True
        if began:
            _log.warning(
                "SQLite at {} is failing ({}): tokens are fetched by each process directly "
                "until a write succeeds again",
                self._path,
                type(error).__name__,
            )

    def _succeeded(self) -> None:
        with self._lock:
            ended, self.failing = self.failing, False
        if ended:
            _log.warning("SQLite at {} answers again: the shared token tier is back", self._path)


class _Connection:
    """One connection: autocommit (transactions are explicit), usable from any thread (one at
    a time: the pool hands it out), refusing schema code it did not write."""

    def __init__(self, path: str, *, wait_ms: int) -> None:
        self.db = sqlite3.connect(
            path, timeout=wait_ms / 1000, isolation_level=None, check_same_thread=False
        )
        self._wait_ms = wait_ms
        try:
            # Whoever can write the file could add triggers or views: none of them may call
            # functions with side effects from this process.
            self.db.execute("PRAGMA trusted_schema = OFF")
            self.db.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            self.db.close()
            raise

    def waits(self, *, wait_ms: int) -> None:
        if wait_ms != self._wait_ms:
            self.db.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            self._wait_ms = wait_ms

    def settled(self) -> bool:
        """Whether no transaction is left open (one that could not be rolled back is not
        reused: the connection is closed instead)."""
        try:
            if self.db.in_transaction:
                self.db.rollback()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()


def _check_path(path: object) -> str:
    if not isinstance(path, str | os.PathLike):
        msg = f"SqliteStore path must be a file path, got {path!r}"
        raise ValueError(msg)
    text = os.fspath(path)
    if not isinstance(text, str) or not text or text == ":memory:" or text.startswith("file:"):
        msg = f"SqliteStore path must be a file on this host, got {path!r}"
        raise ValueError(msg)
    return os.path.abspath(text)


def _create(path: str) -> None:
    """The file, made readable by its owner only if it is new; an existing file others may
    read is used as it is, with one WARNING."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        msg = f"SqliteStore path: the folder {folder} does not exist"
        raise ValueError(msg)
    if os.path.isdir(path):
        msg = f"SqliteStore path {path} is a folder, not a regular file"
        raise ValueError(msg)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        msg = f"SqliteStore cannot open {path}: {exc.strerror}"
        raise ValueError(msg) from None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if not stat.S_ISREG(mode):
        msg = f"SqliteStore path {path} is not a regular file"
        raise ValueError(msg)
    if mode & stat.S_IRWXO:
        _log.warning(
            "{} is open to other users (mode {:o}): its tokens can be read by them",
            path,
            stat.S_IMODE(mode),
        )


def _check_seconds(name: str, value: object, *, most: float) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= most):
        msg = f"SqliteStore {name} must be a number of seconds in (0, {most:g}], got {value!r}"
        raise ValueError(msg)


# --- fork -----------------------------------------------------------------------------------------

_FORK_WAIT = 1.0  # how long a fork waits for a store's connections in use
_DATABASES: weakref.WeakSet[Database] = weakref.WeakSet()
_HELD: list[Database] = []  # the pools whose locks the forking thread holds


def _before_fork() -> None:
    _HELD.extend(db for db in list(_DATABASES) if db.hold_for_fork(_FORK_WAIT))


def _after_fork() -> None:
    while _HELD:
        _HELD.pop().fork_done()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork
    )

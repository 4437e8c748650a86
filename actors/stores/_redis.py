"""RedisStore: tokens and app_tickets shared by many processes and hosts through Redis.

Every process keeps its own TokenActor (L1); Redis is the shared L2. :meth:`RedisStore.wrap`
turns the system's :class:`TokenSource` into a :class:`~actors.stores._shared.SharedSource`:
Redis first, one process per key upstream under a lease, the others wait for its value. What
every shared store does for its system (one system per store, the ledger, the lease renewer,
the listener thread, app_tickets) is :class:`~actors.stores._shared.SharedStore`'s; this store
adds the Redis client and its :class:`Breaker`, the scripts, and the notice subscriber; and
:class:`RedisGrants`, the user grants it keeps (``store.grants()``), sealed with the store's key.

Redis is a cache, not an authority: the scripts (:mod:`actors.stores._layout`) check every
value they read and delete an unusable one; the store reports it once and the process fetches
from upstream as if the key were empty. A problem with one key (a bad value, a key of another
Redis type) never counts against the breaker, which is for Redis itself failing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import urlsplit

import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.retry import Retry

import actors.stores._layout as layout
from actors._config import AppConfig, TokenKind
from actors._errors import StoreKeyError
from actors.stores._base import StoreHealth
from actors.stores._grants import (
    FernetKeys,
    GrantBook,
    Sealer,
    StoredGrant,
    fernet_keys,
)
from actors.stores._health import Breaker, Probe
from actors.stores._layout import GRANT_FIELDS, GrantKeys, Keys
from actors.stores._shared import Acquired, Ask, SharedStore, Unavailable

__all__ = ["RedisGrants", "RedisStore"]


_log = logger.bind(component="RedisStore")
_T = TypeVar("_T")

# How long a lease outlives its holder's last renewal: a holder killed or paused mid-fetch
# keeps the other processes waiting this long at most.
DEFAULT_LEASE = 1.5


class RedisStore(SharedStore):
    """The shared token tier: ``TokenSystem.start(app, store=RedisStore("redis://…"))``.

    Args:
        url: A redis-py URL (``redis://``, ``rediss://``, ``unix://``); or pass ``client``.
        prefix: Namespace of every key and of the notice channel (no braces).
        client: A ready ``redis.Redis`` (or ``redis.RedisCluster``) to use instead of ``url``;
            its timeouts are the caller's business.
        op_timeout: Connect and read timeout of each Redis operation, in seconds.
        lease: How long a key's lease outlives its holder's last renewal, in seconds: the
            holder renews it while it fetches (for at most the policy's
            ``sum(request_timeout) + 2`` seconds), so a holder that was killed or paused is
            taken over after this long.
        failure_threshold: Consecutive Redis failures that open the circuit breaker.
        cooldown: How long an open breaker skips Redis before probing it again.
        ticket_poll: How long ``resend_ticket`` waits for another process's app_ticket;
            default: half the policy's ``ticket_wait``.
        key: A Fernet key (``python -m actors keygen``), or a list of them (the first
            encrypts, all decrypt), for the user grants the store keeps encrypted; default:
            ``FEISHU_TOKEN_KEY``. A store without a key serves app and tenant tokens.

    User grants need a Redis that keeps its data (AOF or RDB): the first grant written checks
    ``CONFIG GET appendonly``/``save`` and warns once if Redis persists nothing.

    In a process forked from the one that made it, :meth:`reopened` makes the store that
    process uses (a store made with ``client=`` cannot be: make one there instead).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "lark-token:",
        client: redis.Redis | redis.RedisCluster | None = None,
        op_timeout: float = 0.5,
        lease: float = DEFAULT_LEASE,
        failure_threshold: int = 3,
        cooldown: float = 5.0,
        ticket_poll: float | None = None,
        key: FernetKeys | None = None,
    ) -> None:
        self.prefix = layout.check_prefix(prefix)
        self._fernet_keys = fernet_keys(key, owner="RedisStore")
        tuning: dict[str, Any] = {
            "op_timeout": op_timeout,
            "lease": lease,
            "failure_threshold": failure_threshold,
            "cooldown": cooldown,
            "ticket_poll": ticket_poll,
        }
        _check_options(url=url, client=client, **tuning)
        self._setup(name="RedisStore", lease=lease, ticket_poll=ticket_poll, threads="actors-redis")
        self._url, self._tuning = url, tuning  # what reopened() makes a store of
        self._owns_client = client is None
        if client is None:
            self._where = _describe(cast(str, url))
            client = _connect(cast(str, url), op_timeout=op_timeout)
        else:
            self._where = type(client).__name__
        self._client = client
        self._breaker = Breaker(
            self._where,
            store="RedisStore",
            backend="Redis",
            threshold=failure_threshold,
            cooldown=cooldown,
        )
        self._channel = layout.channel(self.prefix)
        self._link = Link(client, self._breaker, closed=self._closed)
        self._probe = Probe(client.ping, timeout=op_timeout)
        name = f"RedisStore {self._where} prefix={self.prefix!r}"
        self._grants = RedisGrants(self, Sealer(self._fernet_keys, owner=name), name=name)
        self._persistence = threading.Lock()  # held while the one check of it runs
        self._persistence_checked = False

    # --- the system's side ---------------------------------------------------------------------

    def reopened(self) -> RedisStore:
        """A store like this one for a process forked from the one that made it: a client and
        pool, breaker, ledger and notice id of its own; it connects on first use. Nothing of
        this store is touched (its pool's lock may be held forever in the fork).

        Raises NotImplementedError for a store made with ``client=``: a client's pool holds
        objects bound to it, so the forked process makes its own store (in a ``post_fork``
        hook or the app's lifespan)."""
        if not self._owns_client:
            msg = "a RedisStore made with client= cannot be reopened: make one in the child"
            raise NotImplementedError(msg)
        return RedisStore(
            self._url, prefix=self.prefix, key=self._fernet_keys or None, **self._tuning
        )

    def grants(self) -> RedisGrants:
        """The user grants this store keeps (one book per store), shared by every process on
        this Redis and prefix."""
        return self._grants

    def health(self) -> StoreHealth:
        """Whether Redis answers a PING now (within ``op_timeout``, never longer; not asked
        while the breaker is open, which counts as not reachable), the breaker's state, the
        unusable values found so far by fault, and the class name of the last failure."""
        breaker_open = not self._breaker.closed
        reachable = False
        if not breaker_open and not self.closed:
            reachable, error = self._probe.check()
            if error is not None:
                self._breaker.saw(error)
            elif not reachable:
                self._breaker.saw(TimeoutError())
        return StoreHealth(
            where=self._where,
            reachable=reachable,
            breaker_open=breaker_open,
            faults=self.faults.counts(),
            last_error=self._breaker.last_error,
        )

    def __repr__(self) -> str:
        return f"<RedisStore {self._where} prefix={self.prefix!r}>"

    # --- the tier (the source's side): Redis operations -----------------------------------------

    def keys(self, app: AppConfig, kind: TokenKind, tenant_key: str | None) -> Keys:
        return Keys.of(self.prefix, app, kind, tenant_key)

    def ticket_key(self, app: AppConfig) -> str:
        return layout.ticket_key(self.prefix, app)

    def _listener(self, on_notice: Callable[[str], object]) -> NoticeListener:
        return NoticeListener(self, on_notice)

    def _write_ticket(self, key: str, ticket: str, *, made_at_ms: int | None, ttl_ms: int) -> bool:
        value = layout.ticket_value(key, ticket, made_at_ms=made_at_ms)
        written, fault = self._link.script(
            "write_ticket",
            [key],
            (layout.owner(key), value, "" if made_at_ms is None else made_at_ms, ttl_ms),
            size=2,
        )
        self.faults.report(key, _text(fault), what="app_ticket")
        return bool(written)

    def _post_notice(self, digest: str) -> None:
        channel, client, notice = (
            self._channel,
            self._client,
            layout.notice(digest, origin=self._id),
        )
        self._link.run(lambda: client.publish(channel, notice))

    def _failing(self) -> bool:
        return not self._breaker.closed

    def _disconnect(self, *, deadline: float) -> None:
        self._probe.join(max(0.0, deadline - time.monotonic()))
        if self._owns_client:
            try:
                self._client.close()
            except Exception:  # closing is best effort
                pass

    def _acquire(self, keys: Keys, ask: Ask) -> Acquired:
        """See :meth:`~actors.stores._shared.SharedStore.acquire`: one script."""
        kind, token, pttl, version, fault = self._link.script(
            "acquire",
            [keys.value, keys.lease, keys.version, keys.marker + ask.digest[:32]],
            (
                *(ask.lease_id, ask.lease_ms, ask.replaces, ask.min_ms, ask.since),
                *(ask.invalidate, self._channel, ask.digest, self._id, layout.MARKER_TTL_MS),
                *(keys.owner, layout.TOKEN_TTL_MAX_MS),
            ),
            size=5,
        )
        self.faults.report(keys.value, _text(fault))
        return Acquired(_text(kind), _text(token), int(pttl), int(version))

    def write(
        self, keys: Keys, token: str, ttl_ms: int, seen: int, *, min_ms: int = 0
    ) -> tuple[bool, str, int]:
        """Compare-and-set ``token`` (see ``WRITE``): (written, the token kept, its pttl)."""
        written, kept, pttl, fault = self._link.script(
            "write",
            [keys.value, keys.version],
            (token, ttl_ms, seen, keys.owner, layout.TOKEN_TTL_MAX_MS, min_ms),
            size=4,
        )
        self.faults.report(keys.value, _text(fault))
        return bool(written), _text(kept), int(pttl)

    def renew(self, held: Sequence[tuple[Keys, str]]) -> None:
        for keys, lease_id in held:  # one by one: a lease that fails to renew spares the rest
            try:
                self._link.script("renew", [keys.lease], (lease_id, self._lease_ms))
            except Unavailable:
                pass  # the lease lapses; another process takes over

    def release(self, keys: Keys, lease_id: str) -> None:
        try:
            self._link.script("release", [keys.lease], (lease_id,))
        except Unavailable:
            pass  # the lease expires by itself

    def get_ticket(self, app: AppConfig) -> str | None:
        key = self.ticket_key(app)
        ticket, fault = self._link.script("read_ticket", [key], (layout.owner(key),), size=2)
        self.faults.report(key, _text(fault), what="app_ticket")
        return _text(ticket) or None

    # --- user grants' side ----------------------------------------------------------------------

    def check_persistence(self) -> None:
        """Once per store: warn if this Redis keeps nothing across a restart (no AOF, no RDB
        snapshots), since the user grants it holds would die with it. A Redis that refuses
        ``CONFIG`` (managed services often do) is not judged; one that does not answer now
        is asked again at the next grant written."""
        if self._persistence_checked or not self._persistence.acquire(blocking=False):
            return  # checked, or being checked by another thread
        try:
            if not self._persistence_checked and self._breaker.closed:
                self._persistence_checked = self._judge_persistence()
        finally:
            self._persistence.release()

    def _judge_persistence(self) -> bool:
        """Warn if Redis persists nothing; whether it could tell. Never counts against the
        breaker: CONFIG is not what the store needs Redis for."""
        try:
            settings = {
                **self._client.config_get("appendonly"),
                **self._client.config_get("save"),
            }
        except redis.ResponseError as exc:  # CONFIG disabled or not permitted
            _log.debug("persistence of {} not checked: {}", self._where, type(exc).__name__)
            return True
        except Exception as exc:  # not answering now
            _log.debug("persistence of {} not checked yet ({})", self._where, type(exc).__name__)
            return False
        if settings.get("appendonly") == "no" and settings.get("save") == "":
            _log.warning(
                'Redis at {} persists nothing (appendonly no, save ""): the user grants kept '
                "there are lost when it restarts, and every user must log in again. Enable AOF "
                "(appendonly yes) or RDB snapshots (e.g. save 3600 1) in its redis.conf, or run "
                "CONFIG SET appendonly yes and CONFIG REWRITE",
                self._where,
            )
        return True


class RedisGrants(GrantBook):
    """The user grants of a :class:`RedisStore`: one hash per grant (``layout.GrantKeys``), its
    tokens sealed, every operation one script through the store's breaker (so a failing Redis
    raises :class:`Unavailable` within ``op_timeout``). An unusable grant is reported in the
    store's ``faults`` and read as none; one sealed with a key the store does not have raises
    :class:`~actors._errors.StoreKeyError` and is left as it is."""

    def __init__(self, store: RedisStore, sealer: Sealer, *, name: str) -> None:
        self.name = name
        self._store = store
        self._sealer = sealer

    def check_writable(self) -> None:
        self._sealer.check()

    def read(self, app: AppConfig, user: str) -> StoredGrant | None:
        at = self._at(app, user)
        found, fault, *texts = at.run("grant_read", at.keys.index, size=2 + len(GRANT_FIELDS))
        self._report(at.keys.value, fault)
        return self._opened(at, texts) if int(found) else None

    def lease(self, app: AppConfig, user: str, lease_id: str, *, lease_ms: int) -> int:
        if type(lease_ms) is not int or not 0 < lease_ms < 2**31:
            msg = f"lease_ms must be a positive int, got {lease_ms!r}"
            raise ValueError(msg)
        lease = self._at(app, user).keys.lease
        pttl, fault = self._store._link.script("grant_lease", [lease], (lease_id, lease_ms), size=2)
        self._report(lease, fault)
        return int(pttl)

    def release(self, app: AppConfig, user: str, lease_id: str) -> None:
        try:
            self._store._link.script("release", [self._at(app, user).keys.lease], (lease_id,))
        except Unavailable:
            pass  # the lease expires by itself

    def begin(self, app: AppConfig, user: str, lease_id: str, *, version: int) -> bool:
        at = self._at(app, user)
        began, fault = at.run("grant_begin", at.keys.lease, args=(lease_id, str(version)))
        self._report(at.keys.value, fault)
        return bool(int(began))

    def commit(self, grant: StoredGrant, *, expect: int | None) -> int | None:
        app = layout.checked_commit(self.name, grant, expect, self._store.served(grant.app_id))
        sealed = self._sealer.seal(grant.secrets()).decode()
        at = self._at(app, grant.open_id)
        args = (
            "" if expect is None else str(expect),
            json.dumps(list(grant.scope)),
            str(grant.expires_at_ms),
            "" if grant.refresh_expires_at_ms is None else str(grant.refresh_expires_at_ms),
            str(grant.granted_at_ms),
            sealed,
        )
        version, fault = at.run("grant_commit", at.keys.counter, at.keys.index, args=args)
        written = self._written(at, int(version), fault)
        if written:
            self._store.check_persistence()
        return written or None

    def end(self, app: AppConfig, user: str, reason: str, *, expect: int) -> bool:
        at = self._at(app, user)
        ended, fault = at.run("grant_end", at.keys.counter, args=(str(reason), str(expect)))
        return self._written(at, int(ended), fault) > 0

    def forget(self, app: AppConfig, user: str) -> bool:
        at = self._at(app, user)
        forgotten, fault = at.run("grant_forget", at.keys.index)
        self._report(at.keys.value, fault)
        return bool(int(forgotten))

    def grants(self, app: AppConfig) -> list[StoredGrant]:
        index = layout.users_key(self._store.prefix, app)
        fault, members = self._store._link.script("grant_users", [index], (), size=2)
        self._report(index, fault)
        users = sorted({m.decode() for m in members if isinstance(m, bytes) and _utf8(m)})
        live = []
        for user in users:
            try:
                grant = self.read(app, user)
            except StoreKeyError:  # that user's gets say so; the others are listed
                self._report(self._at(app, user).keys.value, "sealed with another key")
                continue
            if grant is not None and grant.ended is None:
                live.append(grant)
        return live

    def _at(self, app: AppConfig, user: str) -> _Where:
        self._store.serves(app)  # commit(grant) names its app by app_id only
        return _Where(self._store._link, GrantKeys.of(self._store.prefix, app, user), app, user)

    def _opened(self, at: _Where, texts: list[Any]) -> StoredGrant | None:
        """The grant the read script answered (its fields checked there), tokens opened."""
        try:
            fields = dict(zip(GRANT_FIELDS, (_text(text) for text in texts), strict=True))
            scope = tuple(json.loads(fields["scope"]))
        except (ValueError, TypeError):  # not UTF-8, or JSON only Redis's cjson accepts
            self._report(at.keys.value, "not text")
            return None
        access, refresh = "", None
        if not fields["ended"]:
            plain = self._sealer.open(fields["sealed"].encode())  # StoreKeyError: left as is
            try:
                access, refresh = StoredGrant.opened(plain, app_id=at.app.app_id, open_id=at.user)
            except ValueError:
                self._report(at.keys.value, "sealed tokens malformed")
                return None
            problem = layout.tokens_fault(access, refresh)
            if problem:
                self._report(at.keys.value, f"sealed {problem}")
                return None
        return StoredGrant(
            app_id=at.app.app_id,
            open_id=at.user,
            access_token=access,
            refresh_token=refresh,
            expires_at_ms=int(fields["expires_at_ms"]),
            refresh_expires_at_ms=_optional_int(fields["refresh_expires_at_ms"]),
            scope=scope,
            granted_at_ms=int(fields["granted_at_ms"]),
            version=int(fields["ver"]),
            rotating=_optional_int(fields["rotating"]),
            ended=fields["ended"] or None,
        )

    def _written(self, at: _Where, answer: int, fault: object) -> int:
        """A writing script's answer: > 0 written, 0 not (another write came first); < 0 is
        a grant the layout refuses to keep (``fault`` says why), raised as ValueError."""
        if answer < 0:
            msg = f"{self.name} cannot keep this grant of {at.user!r}: {_text(fault)}"
            raise ValueError(msg)
        self._report(at.keys.value, fault)
        return answer

    def _report(self, key: str, fault: object) -> None:
        self._store.faults.report(key, _text(fault), what="user grant")


class _Where(NamedTuple):
    """One user's grant in one store: the keys, and the owner, app and user its scripts check."""

    link: Link
    keys: GrantKeys
    app: AppConfig
    user: str

    def run(self, name: str, *more_keys: str, args: Iterable[str] = (), size: int = 2) -> Any:
        """Grant script ``name``: KEYS the grant then ``more_keys``, ARGV the grant's owner,
        app_id and user then ``args``."""
        keys, who = self.keys, (self.keys.owner, self.app.app_id, self.user)
        return self.link.script(name, [keys.value, *more_keys], (*who, *args), size=size)


def _optional_int(text: str) -> int | None:
    return int(text) if text else None


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


class NoticeListener:
    """The subscriber of a store's notice channel: turns other processes' invalidation notices
    into ``on_notice(token)`` calls for the tokens this process was handed (on its own thread)."""

    def __init__(self, store: RedisStore, on_notice: Callable[[str], object]) -> None:
        self._store = store
        self._on_notice = on_notice
        self.listening = threading.Event()  # subscribed: notices published from now on arrive

    def run(self) -> None:
        backoff = 0.1
        while not self._store._closed.is_set():
            pubsub = cast(Any, self._store._client).pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._store._channel)
                self.listening.set()
                backoff = 0.1
                while not self._store._closed.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        self._store.deliver_notice(message.get("data"), self._on_notice)
            except Exception as exc:  # Redis gone: subscribe again after a pause
                _log.debug("notice listener lost Redis ({}); resubscribing", type(exc).__name__)
            finally:
                self.listening.clear()
                try:
                    pubsub.close()
                except Exception:
                    pass
            self._store._closed.wait(backoff)
            backoff = min(backoff * 2, 2.0)


class Link:
    """The store's way to Redis: the client, its breaker and the scripts. Every call answers
    or raises :class:`Unavailable`; only Redis itself failing counts against the breaker."""

    _SCRIPTS = (
        ("acquire", layout.ACQUIRE),
        ("write", layout.WRITE),
        ("release", layout.RELEASE),
        ("renew", layout.RENEW),
        ("read_ticket", layout.READ_TICKET),
        ("write_ticket", layout.WRITE_TICKET),
        ("grant_read", layout.GRANT_READ),
        ("grant_users", layout.GRANT_USERS),
        ("grant_lease", layout.GRANT_LEASE),
        ("grant_begin", layout.GRANT_BEGIN),
        ("grant_commit", layout.GRANT_COMMIT),
        ("grant_end", layout.GRANT_END),
        ("grant_forget", layout.GRANT_FORGET),
    )

    def __init__(
        self, client: redis.Redis | redis.RedisCluster, breaker: Breaker, *, closed: threading.Event
    ) -> None:
        self._breaker = breaker
        self._closed = closed
        self._scripts = {name: client.register_script(text) for name, text in self._SCRIPTS}

    def run(self, op: Callable[[], _T]) -> _T:
        if self._closed.is_set() or not self._breaker.allow():
            raise Unavailable
        try:
            result = op()
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):  # one key's problem, not Redis's: no breaker
                raise Unavailable from exc
            self._breaker.failed(exc)
            raise Unavailable from exc
        except Exception as exc:  # redis-py's errors, socket errors, a malformed answer
            self._breaker.failed(exc)
            raise Unavailable from exc
        self._breaker.succeeded()
        return result

    def script(
        self, name: str, keys: list[str], args: Iterable[str | int], *, size: int | None = None
    ) -> Any:
        """The script's answer; with ``size``, a list of that many items (or Unavailable)."""
        script = self._scripts[name]
        answer = self.run(lambda: script(keys=keys, args=list(args)))
        if size is not None and (not isinstance(answer, list) or len(answer) != size):
            raise Unavailable  # not Redis as the scripts know it
        return answer


def _connect(url: str, *, op_timeout: float) -> redis.Redis:
    """A client of its own for ``url`` (no connection yet): every operation is bounded by
    ``op_timeout`` and tried once (the breaker, not retries, handles a failing Redis)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=op_timeout,
        socket_connect_timeout=op_timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _describe(url: str) -> str:
    """``url`` for log lines: scheme, host, port and database, never the password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_options(
    *,
    url: object,
    client: object,
    op_timeout: object,
    lease: object,
    failure_threshold: object,
    cooldown: object,
    ticket_poll: object,
) -> None:
    for name, value in (("op_timeout", op_timeout), ("cooldown", cooldown), ("lease", lease)):
        _check_positive(name, value)
    if ticket_poll is not None:
        _check_positive("ticket_poll", ticket_poll)
    if not isinstance(failure_threshold, int) or failure_threshold < 1:
        msg = f"RedisStore failure_threshold must be an int >= 1, got {failure_threshold!r}"
        raise ValueError(msg)
    if (url is None) == (client is None):
        msg = "RedisStore needs either url= or client=, not both"
        raise ValueError(msg)
    if url is not None and not isinstance(url, str):
        msg = f"RedisStore url must be a string such as redis://host:6379/0, got {url!r}"
        raise ValueError(msg)


def _check_positive(name: str, value: object) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e9):
        msg = f"RedisStore {name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)

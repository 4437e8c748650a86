"""RedisStore: tokens and app_tickets shared by many processes and hosts through Redis.

Every process keeps its own TokenActor (L1); Redis is the shared L2. :meth:`RedisStore.wrap`
turns the system's :class:`TokenSource` into a :class:`SharedSource`: Redis first, one process
per key upstream under a lease, the others wait for its value. The store owns what the sources
of one system share: the Redis client and its :class:`Breaker`, the scripts, the process's
:class:`~actors.stores._base.Ledger`, the :class:`Renewer` that keeps this process's leases
alive while it fetches, and the listener thread for invalidation notices (started by
:meth:`RedisStore.attach`, stopped by :meth:`RedisStore.close`).

Redis is a cache, not an authority: the scripts (:mod:`actors.stores._layout`) check every
value they read and delete an unusable one; the store reports it once and the process fetches
from upstream as if the key were empty. A problem with one key (a bad value, a key of another
Redis type) never counts against the breaker, which is for Redis itself failing.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import urlsplit

import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.retry import Retry

import actors.stores._layout as layout
from actors._config import AppConfig, RefreshPolicy
from actors._errors import SystemStoppedError, UpstreamError
from actors._source import Grant, TokenRequest, TokenSource
from actors.feishu import _protocol as feishu
from actors.stores._base import Ledger, Store, StoreHealth, token_digest
from actors.stores._health import Breaker, FaultLog, Probe
from actors.stores._layout import Keys

__all__ = ["RedisStore", "SharedSource"]


_log = logger.bind(component="RedisStore")
_T = TypeVar("_T")

# How long a lease outlives its holder's last renewal: a holder killed or paused mid-fetch
# keeps the other processes waiting this long at most.
DEFAULT_LEASE = 1.5
_RENEWALS_PER_LEASE = 5  # renewals that may be missed (a busy host) before the lease lapses


class RedisStore(Store):
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
    ) -> None:
        self.prefix = layout.check_prefix(prefix)
        tuning: dict[str, Any] = {
            "op_timeout": op_timeout,
            "lease": lease,
            "failure_threshold": failure_threshold,
            "cooldown": cooldown,
            "ticket_poll": ticket_poll,
        }
        _check_options(url=url, client=client, **tuning)
        self._url, self._tuning = url, tuning  # what reopened() makes a store of
        self._owns_client = client is None
        if client is None:
            self._where = _describe(cast(str, url))
            client = _connect(cast(str, url), op_timeout=op_timeout)
        else:
            self._where = type(client).__name__
        self._client = client
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self.ticket_poll = ticket_poll
        self._breaker = Breaker(self._where, threshold=failure_threshold, cooldown=cooldown)
        self._id = secrets.token_hex(8)  # tells this store's own notices from the others'
        self._channel = layout.channel(self.prefix)
        self._closed = threading.Event()
        self._link = Link(client, self._breaker, closed=self._closed)
        self._probe = Probe(client.ping, timeout=op_timeout)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._notices: NoticeListener | None = None
        self._ledger = Ledger()  # shared with the source: tokens handed out, tokens dead
        self._renewer = Renewer(self, every=lease / _RENEWALS_PER_LEASE)
        self._apps: dict[str, AppConfig] = {}  # the apps served, for put_ticket(app_id)
        self.faults = FaultLog()

    # --- the system's side ---------------------------------------------------------------------

    def wrap(self, source: TokenSource, policy: RefreshPolicy) -> SharedSource:
        """The token source a TokenSystem uses with this store: ``source`` behind Redis."""
        if not isinstance(source, TokenSource):
            msg = f"RedisStore.wrap needs a TokenSource, got {source!r}"
            raise ValueError(msg)
        with self._lock:
            self._refuse_reuse()
        return SharedSource(self, source, policy, ledger=self._ledger, closed=self._closed)

    def attach(self, on_notice: Callable[[str], object]) -> None:
        """Start listening for invalidation notices; ``on_notice(token)`` is called (on the
        listener thread) for each token this process was handed and another one invalidated.
        One store serves one TokenSystem."""
        with self._lock:
            self._refuse_reuse()
            self._notices = NoticeListener(self, on_notice)
            self._thread = threading.Thread(
                target=self._notices.run, name="actors-redis-notices", daemon=True
            )
            self._thread.start()

    def _refuse_reuse(self) -> None:
        if self._closed.is_set():
            msg = "this RedisStore is closed; make a new one"
            raise ValueError(msg)
        if self._thread is not None:
            msg = "this RedisStore already serves a TokenSystem; give each system its own"
            raise ValueError(msg)

    def close(self, *, timeout: float = 2.0) -> None:
        """Stop the store's threads, end every wait and release the connections. Idempotent."""
        self._closed.set()
        self._renewer.stop()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [self._thread, self._renewer.thread]
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._probe.join(max(0.0, deadline - time.monotonic()))
        if self._owns_client:
            try:
                self._client.close()
            except Exception:  # closing is best effort
                pass

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
        return RedisStore(self._url, prefix=self.prefix, **self._tuning)

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

    def put_ticket(
        self, app: AppConfig | str, ticket: str, *, made_at: float | None = None
    ) -> bool:
        """Share the app_ticket the application received, unless Redis holds a newer one
        (see :meth:`Store.put_ticket`); kept 12 h from ``made_at`` (or from now). False if it
        was not written: Redis is down, holds a newer ticket, or the ticket is not one the
        store may hold (it still serves this process)."""
        if not isinstance(ticket, str) or not ticket.strip():
            msg = "app_ticket must be a non-empty string"
            raise ValueError(msg)
        made_at_ms = layout.made_at_ms(made_at)
        if isinstance(app, AppConfig):
            self.serves(app)
            config: AppConfig | None = app
        else:
            with self._lock:
                config = self._apps.get(app)
        app_id = config.app_id if config is not None else str(app)
        self._ledger.use_ticket(app_id, ticket)
        if config is None:
            _log.debug("app_ticket of {} not shared: the store has not served that app", app_id)
            return False
        key = layout.ticket_key(self.prefix, config)
        if not layout.shareable(ticket):
            self.faults.report(key, "not printable ASCII, or too long", what="app_ticket")
            return False
        ttl_ms = layout.ticket_ttl_ms(made_at_ms, now_ms=time.time() * 1000)
        if ttl_ms <= 0:
            _log.debug("app_ticket of {} not shared: made over 12 h ago", app_id)
            return False
        value = layout.ticket_value(key, ticket, made_at_ms=made_at_ms)
        try:
            written, fault = self._link.script(
                "write_ticket",
                [key],
                (layout.owner(key), value, "" if made_at_ms is None else made_at_ms, ttl_ms),
                size=2,
            )
        except Unavailable:
            return False
        self.faults.report(key, _text(fault), what="app_ticket")
        if not written:
            _log.debug("app_ticket of {} not shared: the store holds a newer one", app_id)
        return bool(written)

    def serves(self, app: AppConfig) -> None:
        """Remember ``app``'s config, for calls that name it by app_id only."""
        with self._lock:
            self._apps[app.app_id] = app

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __repr__(self) -> str:
        return f"<RedisStore {self._where} prefix={self.prefix!r}>"

    # --- Redis operations (the source's side) --------------------------------------------------

    def acquire(
        self,
        keys: Keys,
        lease_id: str,
        *,
        lease_ms: int,
        replaces: str,
        min_ms: int,
        since: int,
        invalidate: str = "",
    ) -> Acquired:
        """Serve the shared value, or take the lease, or say how long the lease has left.
        ``invalidate``: first drop that token from Redis and tell every process, once."""
        digest = token_digest(invalidate) if invalidate else ""
        kind, token, pttl, version, fault = self._link.script(
            "acquire",
            [keys.value, keys.lease, keys.version, keys.marker + digest[:32]],
            (
                *(lease_id, lease_ms, replaces, min_ms, since),
                *(invalidate, self._channel, digest, self._id, layout.MARKER_TTL_MS),
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

    def renew(self, lease_key: str, lease_id: str) -> None:
        self._link.script("renew", [lease_key], (lease_id, self.lease_ms))

    def release(self, keys: Keys, lease_id: str) -> None:
        try:
            self._link.script("release", [keys.lease], (lease_id,))
        except Unavailable:
            pass  # the lease expires by itself

    def get_ticket(self, app: AppConfig) -> str | None:
        key = layout.ticket_key(self.prefix, app)
        ticket, fault = self._link.script("read_ticket", [key], (layout.owner(key),), size=2)
        self.faults.report(key, _text(fault), what="app_ticket")
        return _text(ticket) or None

    # --- invalidation notices ------------------------------------------------------------------


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
                        self._on_message(message.get("data"))
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

    def _on_message(self, data: object) -> None:
        """One message from the channel: anyone who can publish there may send anything, so
        nothing in it may stop the listener."""
        notice = layout.parse_notice(data)
        if notice is None:
            _log.debug("ignored a malformed invalidation notice")
            return
        if notice.origin == self._store._id:
            return
        self._store._ledger.note_dead(notice.digest, notice.version)
        token = self._store._ledger.token(notice.digest)
        if token is None:
            return  # never cached here
        try:
            self._on_notice(token)
        except Exception as exc:
            _log.warning("invalidation notice could not be delivered: {}", type(exc).__name__)


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


class Renewer:
    """Keeps the leases this process holds alive while it fetches, so that a holder that was
    killed or paused is noticed within one lease, however long a live fetch may take.

    One thread per store, started with the first lease held, renewing every lease each
    ``every`` seconds until its ``until`` (the longest a fetch may take) or its release.
    """

    def __init__(self, store: RedisStore, *, every: float) -> None:
        self._store = store
        self._every = every
        self._cond = threading.Condition()
        self._held: dict[str, tuple[str, float]] = {}  # lease id -> (lease key, renew until)
        self.thread: threading.Thread | None = None

    def hold(self, lease_key: str, lease_id: str, *, until: float) -> None:
        with self._cond:
            self._held[lease_id] = (lease_key, until)
            if self.thread is None and not self._store.closed:
                self.thread = threading.Thread(
                    target=self._run, name="actors-redis-leases", daemon=True
                )
                self.thread.start()
            self._cond.notify()

    def drop(self, lease_id: str) -> None:
        with self._cond:
            self._held.pop(lease_id, None)

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        store = self._store
        while not store.closed:
            with self._cond:
                while not self._held and not store.closed:
                    self._cond.wait()
                now = time.monotonic()
                due = [(i, k) for i, (k, until) in self._held.items() if until > now]
            for lease_id, lease_key in due:
                try:
                    store.renew(lease_key, lease_id)
                except Unavailable:
                    pass  # the lease lapses; another process takes over
            store._closed.wait(self._every)


# A shared value is served only with this much more than the safety margin left, so that the
# reader's clock, counting from before the read, still finds it servable.
_SLACK_MS = 500
_POLL_FIRST, _POLL_MAX = 0.005, 0.05  # a loser's polls for the holder's value
_TICKET_POLL_MAX = 0.25


class SharedSource:
    """The :class:`TokenSource` of a TokenSystem with a :class:`RedisStore`: Redis first, one
    process per key upstream (``inner``), the others wait for its value.

    It shares the store's ``ledger`` (tokens it hands out, tokens dead) with the notice
    listener, and the store's ``closed`` event ends its waits.
    """

    def __init__(
        self,
        store: RedisStore,
        inner: TokenSource,
        policy: RefreshPolicy,
        *,
        ledger: Ledger,
        closed: threading.Event,
    ) -> None:
        self._store = store
        self._inner = inner
        self._ledger = ledger
        self._closed = closed
        # The longest a live holder fetches (one attempt's timeouts, and some) while renewing.
        self._hold_for = sum(policy.request_timeout) + 2.0
        self._max_wait = 3 * (self._hold_for + store.lease)  # a holder, and two after it died
        self._min_ms = round(policy.safety_margin * 1000) + _SLACK_MS
        poll = store.ticket_poll
        self._ticket_poll = poll if poll is not None else policy.ticket_wait / 2

    def fetch(self, request: TokenRequest) -> Grant:
        if self._closed.is_set():
            raise SystemStoppedError()
        self._store.serves(request.app)
        keys = Keys.of(self._store.prefix, request.app, request.kind, request.tenant_key)
        since, invalidate = -1, ""
        if request.cause == "invalidate" and request.replaces:
            noticed = self._ledger.noticed_at(request.replaces)
            if noticed is None:  # found invalid here: drop it from Redis, tell the others
                invalidate = request.replaces
                self._ledger.note_dead(token_digest(invalidate), -1)
            else:  # another process's notice: it dropped the value; serve what came since
                since = noticed
        try:
            return self._shared(request, keys, since, invalidate)
        except Unavailable:
            pass
        if self._closed.is_set():
            raise SystemStoppedError()
        # Redis is down: this process fetches for itself (its TokenActor still single-flights).
        return self._handed(self._inner.fetch(request))

    def _shared(self, request: TokenRequest, keys: Keys, since: int, invalidate: str) -> Grant:
        """``since`` < 0: the first read never serves ``request.replaces``; later reads (and a
        first one with ``since`` >= 0) do if it was written after version ``since``.
        ``invalidate``: the first read drops that token from Redis and tells the others."""
        lease_id = secrets.token_hex(16)
        excluded = request.replaces or ""
        give_up_at: float | None = None
        delay = _POLL_FIRST
        while True:
            got = self._store.acquire(
                keys,
                lease_id,
                lease_ms=self._store.lease_ms,
                replaces=excluded,
                min_ms=self._min_ms,
                since=since,
                invalidate=invalidate,
            )
            invalidate = ""
            if since < 0:
                since = got.version
            if got.kind == "value":
                if got.token == excluded or not self._ledger.is_dead(got.token):
                    return self._handed(Grant(got.token, got.pttl_ms / 1000))
                excluded, since = got.token, got.version  # invalidated elsewhere a moment ago
                continue
            if got.kind == "lease":
                return self._hold(request, keys, lease_id, got.version)
            now = time.monotonic()
            if give_up_at is None:
                give_up_at = now + self._max_wait
            elif now >= give_up_at:
                detail = "shared store: no token from the processes holding the lease"
                raise UpstreamError(None, None, 1, detail=detail)
            if self._closed.wait(min(delay, max(got.pttl_ms, 1) / 1000)):
                raise SystemStoppedError()
            delay = min(delay * 2, _POLL_MAX)

    def _hold(self, request: TokenRequest, keys: Keys, lease_id: str, seen: int) -> Grant:
        store = self._store
        started = time.monotonic()  # before the request leaves: the lifetime counts from here
        store._renewer.hold(keys.lease, lease_id, until=started + self._hold_for)
        try:
            grant = self._inner.fetch(request)
        except BaseException:
            store._renewer.drop(lease_id)
            store.release(keys, lease_id)
            raise
        answer = grant
        try:
            ttl_ms = self._shared_ttl_ms(grant, started)
            if ttl_ms is not None and not layout.shareable(grant.token):
                store.faults.report(keys.value, "a token from upstream the store cannot hold")
            elif ttl_ms is not None:
                written, kept, pttl = store.write(
                    keys, grant.token, ttl_ms, seen, min_ms=self._min_ms
                )
                if not written and kept != request.replaces and not self._ledger.is_dead(kept):
                    answer = Grant(kept, pttl / 1000)  # a longer-lived token is shared already
        except Unavailable:
            pass  # Redis went away meanwhile: the grant is still good for this process
        finally:
            store._renewer.drop(lease_id)
            store.release(keys, lease_id)  # after the write: waiters find the value first
        return self._handed(answer)

    def _shared_ttl_ms(self, grant: Grant, started: float) -> int | None:
        """What is left of ``grant`` now, counted from before its request left (a holder
        paused after the answer came writes what is really left, never its stale lifetime);
        None for a lifetime not to share. A lifetime the TokenActor will refuse (NaN, longer
        than Feishu's, within the margin) is not shared: the caller gets the grant and
        reports the failed attempt."""
        expire = grant.expire
        if not feishu.usable_expire(expire) or expire * 1000 > layout.TOKEN_TTL_MAX_MS:
            return None
        left_ms = math.floor((expire - (time.monotonic() - started)) * 1000)
        return left_ms if left_ms > self._min_ms else None

    def _handed(self, grant: Grant) -> Grant:
        """``grant``, remembered as gone to this process's cache (for the notices)."""
        self._ledger.handed(grant.token)
        return grant

    def resend_ticket(self, app: AppConfig) -> str | None:
        """The app_ticket in Redis if this process has not used it yet; otherwise ask Feishu to
        push it again and wait (up to ``ticket_poll``) for a process to share a new one."""
        store = self._store
        store.serves(app)
        try:
            first = store.get_ticket(app)
        except Unavailable:
            return self._inner.resend_ticket(app)
        if first is not None and first != self._ledger.ticket(app.app_id):
            self._ledger.use_ticket(app.app_id, first)
            return first
        pushed = self._inner.resend_ticket(app)
        if isinstance(pushed, str) and pushed:
            store.put_ticket(app, pushed)
            return pushed
        deadline = time.monotonic() + self._ticket_poll
        delay = 0.05
        while (left := deadline - time.monotonic()) > 0:
            if self._closed.wait(min(delay, left)):
                return None
            delay = min(delay * 2, _TICKET_POLL_MAX)
            try:
                ticket = store.get_ticket(app)
            except Unavailable:
                return None
            if ticket is not None and ticket != first:
                self._ledger.use_ticket(app.app_id, ticket)
                return ticket
        return None


class Unavailable(Exception):
    """Redis did not answer (or the breaker skips it): fall back to the wrapped source."""


class Acquired(NamedTuple):
    kind: str  # value | lease | wait
    token: str
    pttl_ms: int
    version: int  # the key's write version when it was read

"""RedisStore: tokens and app_tickets shared by many processes and hosts through Redis.

Every process keeps its own TokenActor (L1); Redis is the shared L2. :meth:`RedisStore.wrap`
turns the system's :class:`TokenSource` into a :class:`SharedSource`: Redis first, one process
per key upstream under a lease, the others wait for its value. The store owns what the sources
of one system share: the Redis client and its :class:`Breaker`, the scripts, the process's
:class:`~actors.stores._base.Ledger`, and the listener thread for invalidation notices (started
by :meth:`RedisStore.attach`, stopped by :meth:`RedisStore.close`).

The layout in Redis (keys, values, notices) and the Lua scripts that keep it consistent close
the module: each script's ``KEYS``/``ARGV`` order is the argument tuple of the store method that
runs it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import quote, urlsplit

import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.retry import Retry

from actors._config import AppConfig, RefreshPolicy, TokenKind
from actors._errors import SystemStoppedError, UpstreamError
from actors._source import Grant, TokenRequest, TokenSource
from actors.feishu import _protocol as feishu
from actors.stores._base import Ledger, Store, token_digest

__all__ = ["RedisStore", "SharedSource"]


_log = logger.bind(component="RedisStore")
_T = TypeVar("_T")


class RedisStore(Store):
    """The shared token tier: ``TokenSystem.start(app, store=RedisStore("redis://…"))``.

    Args:
        url: A redis-py URL (``redis://``, ``rediss://``, ``unix://``); or pass ``client``.
        prefix: Namespace of every key and of the notice channel (no braces).
        client: A ready ``redis.Redis`` (or ``redis.RedisCluster``) to use instead of ``url``;
            its timeouts are the caller's business.
        op_timeout: Connect and read timeout of each Redis operation, in seconds.
        lease: How long one process may fetch a key's token before another takes over;
            default: the policy's ``sum(request_timeout) + 2`` seconds.
        failure_threshold: Consecutive Redis failures that open the circuit breaker.
        cooldown: How long an open breaker skips Redis before probing it again.
        ticket_poll: How long ``resend_ticket`` waits for another process's app_ticket;
            default: half the policy's ``ticket_wait``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "lark-token:",
        client: redis.Redis | redis.RedisCluster | None = None,
        op_timeout: float = 0.5,
        lease: float | None = None,
        failure_threshold: int = 3,
        cooldown: float = 5.0,
        ticket_poll: float | None = None,
    ) -> None:
        self.prefix = check_prefix(prefix)
        for name, value in (("op_timeout", op_timeout), ("cooldown", cooldown)):
            _check_positive(name, value)
        for name, optional in (("lease", lease), ("ticket_poll", ticket_poll)):
            if optional is not None:
                _check_positive(name, optional)
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            msg = f"RedisStore failure_threshold must be an int >= 1, got {failure_threshold!r}"
            raise ValueError(msg)
        if (url is None) == (client is None):
            msg = "RedisStore needs either url= or client=, not both"
            raise ValueError(msg)
        if url is not None and not isinstance(url, str):
            msg = f"RedisStore url must be a string such as redis://host:6379/0, got {url!r}"
            raise ValueError(msg)
        if client is None:
            self._where = _describe(cast(str, url))
            client = redis.Redis.from_url(
                cast(str, url),
                socket_timeout=op_timeout,
                socket_connect_timeout=op_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_client = True
        else:
            self._where = type(client).__name__
            self._owns_client = False
        self._client = client
        self.lease = lease
        self.ticket_poll = ticket_poll
        self._breaker = Breaker(self._where, threshold=failure_threshold, cooldown=cooldown)
        self._id = secrets.token_hex(8)  # tells this store's own notices from the others'
        self._channel = channel(self.prefix)
        self._scripts = {
            name: client.register_script(text)
            for name, text in (
                ("acquire", ACQUIRE),
                ("write", WRITE),
                ("release", RELEASE),
            )
        }
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_notice: Callable[[str], object] | None = None
        self._ledger = Ledger()  # shared with the source: tokens handed out, tokens dead

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
            self._on_notice = on_notice
            self._thread = threading.Thread(
                target=self._listen, name="actors-redis-notices", daemon=True
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
        """Stop the listener thread, end every wait and release the connections. Idempotent."""
        self._closed.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._owns_client:
            try:
                self._client.close()
            except Exception:  # closing is best effort
                pass

    def put_ticket(self, app_id: str, ticket: str) -> bool:
        """Share the app_ticket the application received (kept 12 h); False if Redis is down."""
        if not isinstance(ticket, str) or not ticket.strip():
            msg = "app_ticket must be a non-empty string"
            raise ValueError(msg)
        self._ledger.use_ticket(app_id, ticket)
        value = json.dumps({"v": VERSION, "ticket": ticket})
        key = ticket_key(self.prefix, app_id)
        try:
            self._run(lambda: self._client.set(key, value, px=TICKET_TTL_MS))
        except Unavailable:
            return False
        return True

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __repr__(self) -> str:
        return f"<RedisStore {self._where} prefix={self.prefix!r}>"

    # --- Redis operations (the source's side) --------------------------------------------------

    def _run(self, op: Callable[[], _T]) -> _T:
        if self._closed.is_set() or not self._breaker.allow():
            raise Unavailable
        try:
            result = op()
        except Exception as exc:  # redis-py's errors, socket errors, a malformed answer
            self._breaker.failed(exc)
            raise Unavailable from exc
        self._breaker.succeeded()
        return result

    def _script(self, name: str, keys: list[str], args: Iterable[str | int]) -> list[Any]:
        script = self._scripts[name]
        return cast("list[Any]", self._run(lambda: script(keys=keys, args=list(args))))

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
        kind, token, pttl, now = self._script(
            "acquire",
            [keys.value, keys.lease, keys.marker + digest[:32]],
            (
                *(lease_id, lease_ms, replaces, min_ms, since),
                *(invalidate, self._channel, digest, self._id, MARKER_TTL_MS),
            ),
        )
        return Acquired(_text(kind), _text(token), int(pttl), int(now))

    def write(self, keys: Keys, token: str, ttl_ms: int, started_ms: int) -> tuple[bool, str, int]:
        """Compare-and-set ``token`` (see ``WRITE``): (written, the token kept, its pttl)."""
        written, kept, pttl = self._script("write", [keys.value], (token, ttl_ms, started_ms))
        return bool(written), _text(kept), int(pttl)

    def release(self, keys: Keys, lease_id: str) -> None:
        try:
            self._script("release", [keys.lease], (lease_id,))
        except Unavailable:
            pass  # the lease expires by itself

    def get_ticket(self, app_id: str) -> str | None:
        key = ticket_key(self.prefix, app_id)
        raw = self._run(lambda: self._client.get(key))
        try:
            value = json.loads(cast(bytes, raw)) if raw is not None else None
        except ValueError:
            return None
        ticket = value.get("ticket") if isinstance(value, dict) else None
        return ticket if isinstance(ticket, str) and ticket else None

    # --- invalidation notices ------------------------------------------------------------------

    def _listen(self) -> None:
        backoff = 0.1
        while not self._closed.is_set():
            pubsub = cast(Any, self._client).pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._listening.set()
                backoff = 0.1
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message.get("data"))
            except Exception as exc:  # Redis gone: subscribe again after a pause
                _log.debug("notice listener lost Redis ({}); resubscribing", type(exc).__name__)
            finally:
                self._listening.clear()
                try:
                    pubsub.close()
                except Exception:
                    pass
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_message(self, data: object) -> None:
        try:
            notice = json.loads(cast(bytes, data))
            digest, origin, at_ms = notice["digest"], notice["origin"], int(notice["at_ms"])
        except (ValueError, TypeError, KeyError):
            return
        if origin == self._id or not isinstance(digest, str):
            return
        self._ledger.note_dead(digest, at_ms)
        token = self._ledger.token(digest)
        with self._lock:
            on_notice = self._on_notice
        if token is None or on_notice is None:
            return  # never cached here
        try:
            on_notice(token)
        except Exception as exc:
            _log.warning("invalidation notice could not be delivered: {}", type(exc).__name__)


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


def _check_positive(name: str, value: object) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e9):
        msg = f"RedisStore {name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)


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
        lease = store.lease if store.lease is not None else sum(policy.request_timeout) + 2.0
        self._lease_ms = max(1, round(lease * 1000))
        self._max_wait = 3 * lease  # a holder, and up to two more after it died
        self._min_ms = round(policy.safety_margin * 1000) + _SLACK_MS
        poll = store.ticket_poll
        self._ticket_poll = poll if poll is not None else policy.ticket_wait / 2

    def fetch(self, request: TokenRequest) -> Grant:
        if self._closed.is_set():
            raise SystemStoppedError()
        keys = Keys.of(self._store.prefix, request.app.app_id, request.kind, request.tenant_key)
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
        first one with ``since`` >= 0) do if it was written at or after ``since``.
        ``invalidate``: the first read drops that token from Redis and tells the others."""
        lease_id = secrets.token_hex(16)
        excluded = request.replaces or ""
        give_up_at: float | None = None
        delay = _POLL_FIRST
        while True:
            got = self._store.acquire(
                keys,
                lease_id,
                lease_ms=self._lease_ms,
                replaces=excluded,
                min_ms=self._min_ms,
                since=since,
                invalidate=invalidate,
            )
            invalidate = ""
            if since < 0:
                since = got.now_ms
            if got.kind == "value":
                if got.token == excluded or not self._ledger.is_dead(got.token):
                    return self._handed(Grant(got.token, got.pttl_ms / 1000))
                excluded, since = got.token, got.now_ms  # invalidated elsewhere a moment ago
                continue
            if got.kind == "lease":
                return self._hold(request, keys, lease_id, got.now_ms)
            now = time.monotonic()
            if give_up_at is None:
                give_up_at = now + self._max_wait
            elif now >= give_up_at:
                detail = "shared store: no token from the processes holding the lease"
                raise UpstreamError(None, None, 1, detail=detail)
            if self._closed.wait(min(delay, max(got.pttl_ms, 1) / 1000)):
                raise SystemStoppedError()
            delay = min(delay * 2, _POLL_MAX)

    def _hold(self, request: TokenRequest, keys: Keys, lease_id: str, started: int) -> Grant:
        store = self._store
        try:
            grant = self._inner.fetch(request)
        except BaseException:
            store.release(keys, lease_id)
            raise
        answer = grant
        try:
            expire = grant.expire
            # A lifetime the TokenActor will refuse (NaN, too long, within the margin) is not
            # shared: the caller gets it and reports the failed attempt.
            if feishu.usable_expire(expire) and expire * 1000 > self._min_ms:
                written, kept, pttl = store.write(keys, grant.token, round(expire * 1000), started)
                if not written and kept != request.replaces and not self._ledger.is_dead(kept):
                    answer = Grant(kept, pttl / 1000)  # a longer-lived token is shared already
        except Unavailable:
            pass  # Redis went away meanwhile: the grant is still good for this process
        finally:
            store.release(keys, lease_id)  # after the write: waiters find the value first
        return self._handed(answer)

    def _handed(self, grant: Grant) -> Grant:
        """``grant``, remembered as gone to this process's cache (for the notices)."""
        self._ledger.handed(grant.token)
        return grant

    def resend_ticket(self, app: AppConfig) -> str | None:
        """The app_ticket in Redis if this process has not used it yet; otherwise ask Feishu to
        push it again and wait (up to ``ticket_poll``) for a process to share a new one."""
        store = self._store
        try:
            first = store.get_ticket(app.app_id)
        except Unavailable:
            return self._inner.resend_ticket(app)
        if first is not None and first != self._ledger.ticket(app.app_id):
            self._ledger.use_ticket(app.app_id, first)
            return first
        pushed = self._inner.resend_ticket(app)
        if isinstance(pushed, str) and pushed:
            store.put_ticket(app.app_id, pushed)
            return pushed
        deadline = time.monotonic() + self._ticket_poll
        delay = 0.05
        while (left := deadline - time.monotonic()) > 0:
            if self._closed.wait(min(delay, left)):
                return None
            delay = min(delay * 2, _TICKET_POLL_MAX)
            try:
                ticket = store.get_ticket(app.app_id)
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
    now_ms: int


class Breaker:
    """After ``threshold`` consecutive failures, skip Redis for ``cooldown`` seconds; then let
    one call probe it. One WARNING when it opens, one when it closes."""

    def __init__(self, where: str, *, threshold: int, cooldown: float) -> None:
        self._where = where
        self._threshold = threshold
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def closed(self) -> bool:
        return self._open_until is None

    def allow(self) -> bool:
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or time.monotonic() < self._open_until:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            reopened = self._open_until is not None
            self._failures, self._open_until, self._probing = 0, None, False
        if reopened:
            _log.warning("Redis at {} answers again: the shared token tier is back", self._where)

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._failures += 1
            opens = self._open_until is None and self._failures >= self._threshold
            if opens or self._open_until is not None:  # opening, or a failed probe: (re)start
                self._open_until = time.monotonic() + self._cooldown
                self._probing = False
        if opens:
            _log.warning(
                "Redis at {} is failing ({}): tokens are fetched by each process directly, "
                "Redis is probed again every {:g}s",
                self._where,
                type(error).__name__,
                self._cooldown,
            )


# --- the layout in Redis: keys, values and notices, and the scripts that keep them -------------

VERSION = 1
# An app_ticket lives 12 hours, as the official SDKs keep it.
TICKET_TTL_MS = 12 * 3600 * 1000
# How long one token's invalidation notice is remembered: notices are published once per token.
MARKER_TTL_MS = 60_000


def _part(text: str) -> str:
    # Braces would move the Cluster hash tag and colons would blur the layout: percent-encode.
    return quote(text, safe="-_.~")


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        msg = f"RedisStore prefix must be a non-empty string without braces, got {prefix!r}"
        raise ValueError(msg)
    return prefix


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one token: its value, its lease and the marker prefix of its notices."""

    value: str
    lease: str
    marker: str

    @classmethod
    def of(cls, prefix: str, app_id: str, kind: TokenKind, tenant_key: str | None) -> Keys:
        tenant = _part(tenant_key) if tenant_key else "-"
        value = f"{app_base(prefix, app_id)}:tenant:{tenant}:{kind.value}"
        return cls(value=value, lease=f"{value}:lease", marker=f"{value}:invalidated:")


def app_base(prefix: str, app_id: str) -> str:
    return f"{prefix}{{app:{_part(app_id)}}}"


def ticket_key(prefix: str, app_id: str) -> str:
    return f"{app_base(prefix, app_id)}:ticket"


def channel(prefix: str) -> str:
    return f"{prefix}notices"


# Redis server time in milliseconds, inside a script.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Read the value or take the lease, in one round trip; first, if asked, invalidate a token.
# KEYS: value, lease, marker (of the invalidated token's notice).
# ARGV: lease id, lease ms, replaces ('' for none), min pttl ms, since ms,
#       invalidate ('' for none), channel, digest, origin, marker ms.
# Invalidation: the value is deleted if it still holds exactly that token, and a notice
# {"v": 1, "digest": sha256, "origin": store id, "at_ms": Redis time} is published once per
# token (the marker remembers it). Being in the same script as the lease, the invalidating
# process holds the lease before any process that got the notice can ask for it.
# A value is served if it outlives min pttl and its token is not `replaces`, or (since >= 0) if
# it was written at or after `since` (a fresh upstream answer, even the same token again).
# Returns {'value', token, pttl, now} | {'lease', '', lease ms, now} | {'wait', '', pttl, now}.
ACQUIRE = (
    _NOW
    + """
if ARGV[6] ~= '' then
  local raw = redis.call('GET', KEYS[1])
  if raw then
    local ok, cur = pcall(cjson.decode, raw)
    if ok and type(cur) == 'table' and cur.token == ARGV[6] then
      redis.call('DEL', KEYS[1])
    end
  end
  if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[10]) then
    local notice = cjson.encode({v = 1, digest = ARGV[8], origin = ARGV[9], at_ms = now})
    redis.call('PUBLISH', ARGV[7], notice)
  end
end
local raw = redis.call('GET', KEYS[1])
if raw then
  local pttl = redis.call('PTTL', KEYS[1])
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' and value.v == 1 and type(value.token) == 'string'
      and pttl > tonumber(ARGV[4]) then
    local since = tonumber(ARGV[5])
    if value.token ~= ARGV[3] or (since >= 0 and tonumber(value.issued_ms or 0) >= since) then
      return {'value', value.token, pttl, now}
    end
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'lease', '', tonumber(ARGV[2]), now}
end
return {'wait', '', redis.call('PTTL', KEYS[2]), now}
"""
)

# Monotone compare-and-set of a token value. KEYS: value. ARGV: token, ttl ms, started ms (when
# the writer took its lease). Another token stays if it outlives the new one or was written after
# the writer started (a newer upstream answer); the same token is always rewritten (upstream's
# lifetime for it is the truth). Returns {1, token, ttl} if written, else {0, kept token, pttl}.
WRITE = (
    _NOW
    + """
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, cur = pcall(cjson.decode, raw)
  if ok and type(cur) == 'table' and cur.v == 1 and type(cur.token) == 'string'
      and cur.token ~= ARGV[1] then
    local pttl = redis.call('PTTL', KEYS[1])
    if pttl > tonumber(ARGV[2]) or tonumber(cur.issued_ms or 0) > tonumber(ARGV[3]) then
      return {0, cur.token, pttl}
    end
  end
end
redis.call('SET', KEYS[1], cjson.encode({v = 1, token = ARGV[1], issued_ms = now}), 'PX', ARGV[2])
return {1, ARGV[1], tonumber(ARGV[2])}
"""
)

# Token-checked release: delete the lease only if it is still ours. KEYS: lease. ARGV: lease id.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
